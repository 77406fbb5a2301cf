"""Example builders: a judged group of samples -> training examples, one registered function each.

A builder sees one prompt's :class:`Group` (its K completions, their judged scores, and the data's real
completion when there is one) and returns index tuples into the group, which the loop turns into rows of
the trained algorithm's record kind:

* ``kind = "pair"`` builders return ``(chosen, rejected)`` index pairs (:data:`REAL` is the data's real
  completion), trained with ``algorithm: dpo`` and any ``dpo.loss``, or ``(chosen, rejected, P(chosen ≻ rejected))``
  triples (``soft_pairs``: the row's ``preference``, for the soft-label pair losses of ``algorithm: sppo``);
* ``kind = "sft"`` builders return ``(index,)`` singletons, trained with ``algorithm: sft``.
* ``kind = "win_rate"`` builders return ``(index, win rate)`` tuples (SPPO), trained with ``algorithm: sppo``;
  the group's pairwise preference matrix, when the judge made one, is ``group.extra["preferences"]``.

With ``iterate.opponent`` ``reference`` or ``mixture`` a group also holds the opponent's samples (after the
policy's K; their indices in ``group.extra["opponents"]``): ``vs_opponent`` and ``win_rate_vs_opponent``
compare the policy's samples with them (online DPO / XPO, Nash-MD). With ``iterate.teacher`` (``use: pool``)
the teacher's completions come last (indices in ``group.extra["teacher"]``): the score builders may pick
them like any sample; the opponent builders and ``soft_pairs`` (``among: policy``) leave them out of the
policy's side.

Scores may be ``None`` (the judge could not score the sample: an unparseable LLM-judge answer, an empty
completion); builders leave those samples out, and the loop counts them in the round's stats. Ties carry
no preference: no builder makes a pair of equal scores or equal texts.

Register your own with ``@BUILDERS.register("name", kind="pair", needs_scores=True)`` over a function
``fn(group, rng, **params) -> list[tuple[int, ...]]``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.registry import Registry, check_params

REAL = -1  # the index of a group's real (data) completion
REAL_REJECTED = -2  # the index of the data's rejected completion (offline pairs: HyPO)

Builder = Callable[..., "list[tuple[int, ...]]"]
BUILDERS: Registry[Builder] = Registry("example builder")


@dataclass
class Group:
    """One prompt's samples as a builder sees them."""

    prompt: Any
    completions: list[str]
    scores: list[float | None]
    real: str | None = None  # the data's own completion (SPIN)
    extra: dict[str, Any] = field(default_factory=dict)

    def text(self, index: int) -> str | None:
        if index == REAL_REJECTED:
            return self.extra.get("real_rejected")
        return self.real if index == REAL else self.completions[index]

    def scored(self) -> list[int]:
        """Indices of the samples with a score, in order."""
        return [i for i, s in enumerate(self.scores) if s is not None]


def _ordered(group: Group, i: int, j: int) -> tuple[int, int] | None:
    """``(winner, loser)`` of samples i and j by score, or None for a tie (equal scores or texts)."""
    si, sj = group.scores[i], group.scores[j]
    if si is None or sj is None or si == sj or group.completions[i] == group.completions[j]:
        return None
    return (i, j) if si > sj else (j, i)


@BUILDERS.register("best_vs_worst", kind="pair", needs_scores=True)
def best_vs_worst(group: Group, rng: random.Random) -> list[tuple[int, int]]:
    """The highest-scored sample against the lowest (the first of each on ties); nothing when they tie."""
    idx = group.scored()
    if len(idx) < 2:
        return []
    best = max(idx, key=lambda i: group.scores[i])
    worst = min(idx, key=lambda i: group.scores[i])
    pair = _ordered(group, best, worst)
    return [pair] if pair else []


@BUILDERS.register("all_pairs", kind="pair", needs_scores=True)
def all_pairs(group: Group, rng: random.Random) -> list[tuple[int, int]]:
    """Every pair i < j of scored samples with different scores and texts, the higher score chosen."""
    idx = group.scored()
    out = []
    for a in range(len(idx)):
        for b in range(a + 1, len(idx)):
            pair = _ordered(group, idx[a], idx[b])
            if pair:
                out.append(pair)
    return out


@BUILDERS.register("random_pairs", kind="pair", needs_scores=True)
def random_pairs(group: Group, rng: random.Random, pairs: int = 1) -> list[tuple[int, int]]:
    """``pairs`` distinct pairs drawn uniformly (by the round's seeded rng) from those with a preference."""
    candidates = all_pairs(group, rng)
    return sorted(rng.sample(candidates, min(pairs, len(candidates))))


@BUILDERS.register("large_margin", kind="pair", needs_scores=True)
def large_margin(group: Group, rng: random.Random, margin: float = 0.5, extremes: bool = True) -> list[tuple[int, int]]:
    """DNO's filter: pairs whose score gap is at least ``margin`` — the best vs the worst only
    (``extremes``, DNO-Prct's choice), or every such pair."""
    pairs = best_vs_worst(group, rng) if extremes else all_pairs(group, rng)
    return [(c, r) for c, r in pairs if group.scores[c] - group.scores[r] >= margin]


def rso_accept(scores: list[float], beta: float, n: int, rng: random.Random, max_draws: int | None = None) -> list[int]:
    """Statistical rejection sampling (RSO, Liu et al. 2023, Algorithm 1) of ``n`` of the candidates.

    Candidates are draws from the proposal (here the current policy). Repeatedly pick a remaining candidate
    uniformly and accept it when ``u < exp((r - r_max) / beta)``, ``u ~ U(0, 1)``, ``r_max`` the largest
    score of all candidates; accepted candidates leave the pool. The accepted samples are then distributed
    as the proposal reweighted by ``exp(r / beta)``: the optimal KL-regularised policy
    ``pi_ref(y) exp(r(y) / beta) / Z`` when the proposal is ``pi_ref``. Stops after ``max_draws`` draws
    (default ``100 * len(scores)``). Returns the accepted indices in acceptance order."""
    pool = list(range(len(scores)))
    if not pool:
        return []
    r_max = max(scores)
    accepted: list[int] = []
    for _ in range(max_draws if max_draws is not None else 100 * len(scores)):
        if len(accepted) >= n or not pool:
            break
        k = rng.randrange(len(pool))
        u = rng.random()
        if u < math.exp((scores[pool[k]] - r_max) / beta):
            accepted.append(pool.pop(k))
    return accepted


@BUILDERS.register("rso", kind="pair", needs_scores=True)
def rso(group: Group, rng: random.Random, beta: float = 0.5, accept: int | None = None, max_draws: int | None = None) -> list[tuple[int, int]]:
    """RSO: rejection-sample ``accept`` (default: all K) samples toward ``pi exp(r / beta)``
    (:func:`rso_accept`), then pair them in acceptance order (1st with 2nd, 3rd with 4th, ...), the higher
    score chosen (RSO's "first-round" pairing); tied pairs are left out."""
    idx = group.scored()
    chosen = rso_accept([group.scores[i] for i in idx], beta, accept or len(idx), rng, max_draws)
    picked = [idx[k] for k in chosen]
    out = []
    for a, b in zip(picked[0::2], picked[1::2]):
        pair = _ordered(group, a, b)
        if pair:
            out.append(pair)
    return out


@BUILDERS.register("spin", kind="pair", needs_scores=False, needs_real=True)
def spin(group: Group, rng: random.Random, per_prompt: int = 1) -> list[tuple[int, int]]:
    """SPIN (Chen et al. 2024): the data's real completion chosen over the policy's own samples (the first
    ``per_prompt`` that differ from it); no judge is needed."""
    if group.real is None:
        raise ValueError("builder 'spin' needs each prompt's real completion: prompts from sft rows (the task, or data.train with a completion)")
    own = [i for i, c in enumerate(group.completions) if c != group.real]
    return [(REAL, i) for i in own[:per_prompt]]


@BUILDERS.register("hypo", kind="pair", needs_scores=False, needs_real=True, needs_pairs=True, own_sample=True)
def hypo(group: Group, rng: random.Random) -> list[tuple[int, int]]:
    """HyPO (Song et al. 2024): the data's offline pair ``(chosen, rejected)`` for the DPO term; the loop attaches the
    policy's first sample of the prompt as the row's ``own`` (the fresh sample of the reverse-KL term, ``sppo.kl_own``)."""
    if group.real is None or group.extra.get("real_rejected") is None:
        raise ValueError("builder 'hypo' needs offline pairs: data.train rows with chosen and rejected (or the task's labelled pairs)")
    return [(REAL, REAL_REJECTED)] if group.real != group.extra["real_rejected"] else []


@BUILDERS.register("cream", kind="pair", needs_scores=True)
def cream(group: Group, rng: random.Random) -> list[tuple[int, int, float]]:
    """CREAM: the best vs the worst by the judge's scores, with the round's rank consistency ``C`` of the group
    (``iterate.judge: cream``) as the soft label: ``soft_dpo`` then gives ``C·L_DPO(y+, y−) + (1 − C)·L_DPO(y−, y+)``."""
    c = group.extra.get("consistency")
    if c is None:  # no second ranking (another judge, or fewer than two samples both judges scored): a hard label
        c = 1.0
    return [(best, worst, float(c)) for best, worst in best_vs_worst(group, rng)]


@BUILDERS.register("best_of_k", kind="sft", needs_scores=True)
def best_of_k(group: Group, rng: random.Random, top: int = 1, min_score: float | None = None) -> list[tuple[int]]:
    """RAFT / RSF: the ``top`` highest-scored samples (ties: the first), optionally only those scoring at
    least ``min_score``, as SFT targets."""
    idx = sorted(group.scored(), key=lambda i: (-group.scores[i], i))[:top]
    return [(i,) for i in idx if min_score is None or group.scores[i] >= min_score]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def group_win_rates(group: Group, include_self: bool = True, temperature: float = 1.0) -> dict[int, float]:
    """Estimated ``P̂(y_i ≻ π_t)`` for each scored sample i of the group, against the group's scored samples.

    From the pairwise judge's matrix ``group.extra["preferences"]`` (``[i][j] = P(y_i ≻ y_j)``) when there is
    one, otherwise from the scores through Bradley–Terry, ``P(y_i ≻ y_j) = σ((s_i − s_j) / temperature)``.
    ``include_self``: SPPO's ``(1/K) Σ_k P(y_i ≻ y_k)`` over all K samples, the sample itself counted as a tie
    (``P(y_i ≻ y_i) = 1/2``); otherwise the mean over the others, ``(1/(K−1)) Σ_{k≠i}`` (SPO's form, the pairwise
    judge's score). Pairs the judge left unknown are left out of the mean."""
    idx = group.scored()
    matrix = group.extra.get("preferences")
    out: dict[int, float] = {}
    for i in idx:
        values = [0.5] if include_self else []
        for j in idx:
            if j == i:
                continue
            if matrix is not None:
                p = matrix[i][j]
            else:
                p = _sigmoid((group.scores[i] - group.scores[j]) / temperature)
            if p is not None:
                values.append(float(p))
        if len(values) > (1 if include_self else 0):
            out[i] = sum(values) / len(values)
    return out


@BUILDERS.register("win_rate", kind="win_rate", needs_scores=True)
def win_rate(group: Group, rng: random.Random, include_self: bool = True, temperature: float = 1.0) -> list[tuple[int, float]]:
    """SPPO: every scored sample with its estimated win rate against the group, ``(index, P̂)``
    (:func:`group_win_rates`); trained with ``algorithm: sppo``."""
    if temperature <= 0:
        raise ValueError(f"builder 'win_rate': temperature must be positive, got {temperature}")
    return sorted(group_win_rates(group, include_self, temperature).items())


def _opponents(group: Group, name: str) -> tuple[list[int], list[int]]:
    """(the policy's sample indices, the opponent's) of a group sampled with ``iterate.opponent`` reference or mixture."""
    opponents = group.extra.get("opponents")
    if not opponents:
        raise ValueError(f"builder {name!r} compares the policy's samples with an opponent's: set iterate.opponent=reference or mixture")
    teacher = set(group.extra.get("teacher") or ())
    return [i for i in range(len(group.completions)) if i not in opponents and i not in teacher], list(opponents)


def _preference(group: Group, i: int, j: int, temperature: float) -> float | None:
    """``P(y_i ≻ y_j)``: the pairwise judge's, else Bradley–Terry on the scores; None when unknown."""
    matrix = group.extra.get("preferences")
    if matrix is not None:
        return matrix[i][j]
    si, sj = group.scores[i], group.scores[j]
    return None if si is None or sj is None else _sigmoid((si - sj) / temperature)


@BUILDERS.register("vs_opponent", kind="pair", needs_scores=True)
def vs_opponent(group: Group, rng: random.Random) -> list[tuple[int, int]]:
    """Online DPO against an opponent (XPO: the reference's samples): the policy's n-th sample paired with the
    opponent's (n mod M)-th, the higher score chosen; ties left out. The loop marks which side is the
    opponent's (row metadata ``opponent``: +1 chosen, −1 rejected), which ``dpo.xpo_alpha`` reads."""
    own, opponents = _opponents(group, "vs_opponent")
    pairs = [_ordered(group, i, opponents[n % len(opponents)]) for n, i in enumerate(own)]
    return [p for p in pairs if p]


@BUILDERS.register("win_rate_vs_opponent", kind="win_rate", needs_scores=True)
def win_rate_vs_opponent(group: Group, rng: random.Random, temperature: float = 1.0) -> list[tuple[int, float]]:
    """Nash-MD: each of the policy's samples with its win rate against the opponent's samples (the geometric
    mixture's), ``(1/M) Σ_m P(y ≻ y'_m)`` from the pairwise judge or Bradley–Terry on the scores at ``temperature``;
    trained with ``algorithm: sppo``, ``sppo.loss: nash_md``."""
    if temperature <= 0:
        raise ValueError(f"builder 'win_rate_vs_opponent': temperature must be positive, got {temperature}")
    own, opponents = _opponents(group, "win_rate_vs_opponent")
    out = []
    for i in own:
        values = [p for p in (_preference(group, i, j, temperature) for j in opponents) if p is not None]
        if values:
            out.append((i, sum(values) / len(values)))
    return out


@BUILDERS.register("soft_pairs", kind="pair", needs_scores=True)
def soft_pairs(group: Group, rng: random.Random, among: str = "all", temperature: float = 1.0, pairs: int | None = None,
               ties: bool = True) -> list[tuple[int, int, float]]:
    """Online IPO / IPO-MD / INPO / OSP: pairs with a soft preference, ``(chosen, rejected, P(chosen ≻ rejected))``.

    Every pair ``i < j`` of scored samples with different texts among ``among`` (``all``; ``policy``: the policy's
    K; ``opponent``: the opponent's M, e.g. both from the geometric mixture for IPO-MD), oriented so that
    ``P ≥ 1/2`` (a tie, ``P = 1/2``, keeps the earlier sample first: it still pulls the margin to 0). ``P`` is the
    pairwise judge's ``P(y_i ≻ y_j)``, else Bradley–Terry on the scores, ``σ((s_i − s_j)/temperature)``.
    ``pairs``: at most that many per prompt, drawn by the round's seeded rng; ``ties: false`` leaves out pairs with
    ``P = 1/2`` (e.g. for DPO, which reads every pair as a hard preference). Trained with ``algorithm: sppo``,
    ``sppo.loss: online_ipo`` or ``soft_dpo`` (the row's ``preference``)."""
    if temperature <= 0:
        raise ValueError(f"builder 'soft_pairs': temperature must be positive, got {temperature}")
    if among not in ("all", "policy", "opponent"):
        raise ValueError(f"builder 'soft_pairs': among must be all, policy or opponent, not {among!r}")
    opponents = set(group.extra.get("opponents") or ())
    if among == "opponent" and not opponents:
        _opponents(group, "soft_pairs")  # names the setting
    teacher = set(group.extra.get("teacher") or ())
    idx = [i for i in group.scored() if among == "all" or (i not in teacher and (i in opponents) == (among == "opponent"))]
    out = []
    for a in range(len(idx)):
        for b in range(a + 1, len(idx)):
            i, j = idx[a], idx[b]
            p = _preference(group, i, j, temperature)
            if p is None or group.completions[i] == group.completions[j] or (not ties and p == 0.5):
                continue
            out.append((i, j, float(p)) if p >= 0.5 else (j, i, 1.0 - float(p)))
    if pairs is not None and len(out) > pairs:
        out = [out[k] for k in sorted(rng.sample(range(len(out)), pairs))]
    return out


def build_builder(name: str, params: dict[str, Any] | None = None) -> Callable[[Group, random.Random], list[tuple[int, ...]]]:
    """The builder ``name`` with its keyword ``params`` checked (unknown or missing ones named)."""
    if name not in BUILDERS:
        raise ValueError(f"iterate.builder: {BUILDERS.unknown(name)}")
    fn = BUILDERS.get(name)
    params = dict(params or {})
    try:
        check_params(fn, f"iterate.builder {name!r}", 2, params)
    except TypeError as e:
        raise ValueError(str(e)) from None

    def build(group: Group, rng: random.Random) -> list[tuple[int, ...]]:
        return fn(group, rng, **params)

    build.kind = fn.kind  # type: ignore[attr-defined]
    build.needs_scores = fn.needs_scores  # type: ignore[attr-defined]
    build.needs_real = getattr(fn, "needs_real", False)  # type: ignore[attr-defined]
    build.needs_pairs = getattr(fn, "needs_pairs", False)  # type: ignore[attr-defined]
    build.own_sample = getattr(fn, "own_sample", False)  # type: ignore[attr-defined]
    build.builder_name = name  # type: ignore[attr-defined]
    return build
