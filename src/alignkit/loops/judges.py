"""Judges: score a round's samples, group by group, in batches; one registered factory each.

A judge takes the round's prompts and, per prompt, its K completions, and returns a :class:`Judgement`:
a score per sample (``None`` where it could not judge) and, for pairwise judges, the matrix
``P(i ≻ j)`` of each group. Pairwise judges score a sample by its win rate against the rest of its group,
``s_i = mean_{j != i} P(i ≻ j)`` (the quantity SPPO and SPO estimate), so every builder works on both.

Registered judges (``iterate.judge``: a name, ``{type: name, ...params}``, or any reward-source spec):

* ``gold`` — the task's gold reward;
* ``reward`` — any reward source of :func:`alignkit.rewards.build_reward_source` (``source``: a reward
  model folder, ``module:function``, an ensemble mapping, ...);
* ``preference`` — a pairwise oracle: the task's ``preference(prompt, a, b)`` (possibly intransitive),
  or a trained preference model (``model``: its folder);
* ``llm`` — LLM-as-judge: a causal LM (``model: policy`` — the live policy itself, self-rewarding — or a
  folder) prompted with a template asking for a score (``mode: score``) or a choice between two responses
  (``mode: choice``); answers are decoded greedily and parsed by :func:`parse_score` / :func:`parse_choice`.
  An answer that does not parse gives no score and is counted (``judge/unparseable``) in the round's stats;
* ``cream`` — CREAM's consistency-regularised self-rewarding: the ``llm`` judge on the live policy and on a
  frozen copy of the previous iterate; the scores are the live policy's, and each group's
  ``consistency`` is the Kendall-τ agreement of the two rankings, ``(τ + 1)/2`` (:func:`rank_consistency`);
* ``none`` — no scores (for builders that need none, e.g. SPIN).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..core.registry import Registry, check_params
from ..rewards.sources import build_reward_source
from ..rollout.generate import generate


@dataclass
class Judgement:
    scores: list[list[float | None]]  # per group, per sample
    preferences: list[list[list[float | None]]] | None = None  # per group: [i][j] = P(i ≻ j)
    answers: list[list[Any]] | None = None  # per group, per sample: what an LLM judge said (score mode)
    stats: dict[str, float] = field(default_factory=dict)
    consistency: list[float | None] | None = None  # per group: CREAM's rank agreement of this round's and last round's judge


@dataclass
class JudgeEnv:
    """What a judge factory may use: the task, the live policy and its tokenizer."""

    task: Any = None
    model: Any = None
    tokenizer: Any = None
    batch_size: int = 64
    progress: bool = False


class Judge:
    name = "judge"

    def judge(self, prompts: list[Any], groups: list[list[str]]) -> Judgement:
        raise NotImplementedError


JUDGES: Registry[Callable[..., Judge]] = Registry("judge")


def _flat(prompts, groups):
    return [p for p, g in zip(prompts, groups, strict=True) for _ in g], [c for g in groups for c in g]


def _regroup(values: list, groups: list[list[str]]) -> list[list]:
    out, k = [], 0
    for g in groups:
        out.append(values[k : k + len(g)])
        k += len(g)
    return out


class ScalarJudge(Judge):
    """Pointwise scores from ``score(prompts, completions) -> [N]`` (a reward source or the gold reward)."""

    def __init__(self, name: str, score: Callable[[list, list], Any]):
        self.name, self._score = name, score

    def judge(self, prompts, groups):
        flat_p, flat_c = _flat(prompts, groups)
        values = self._score(flat_p, flat_c) if flat_c else []
        values = values.tolist() if torch.is_tensor(values) else list(values)
        return Judgement(_regroup([float(v) for v in values], groups), stats={"judge/calls": float(len(flat_c))})


def _pairs_of(groups):
    """(group, i, j) for every i < j of every group."""
    return [(g, i, j) for g, comps in enumerate(groups) for i in range(len(comps)) for j in range(i + 1, len(comps))]


def _pairwise_judgement(groups, pairs, probabilities: list[float | None], stats: dict[str, float]) -> Judgement:
    """Fill each group's P matrix from ``P(i ≻ j)`` of its pairs i < j; score = win rate against the group."""
    prefs: list[list[list[float | None]]] = [[[None] * len(c) for _ in c] for c in groups]
    for (g, i, j), p in zip(pairs, probabilities, strict=True):
        if p is not None:
            prefs[g][i][j], prefs[g][j][i] = p, 1.0 - p
    scores = []
    for matrix in prefs:
        row_scores = []
        for i, row in enumerate(matrix):
            known = [p for j, p in enumerate(row) if j != i and p is not None]
            row_scores.append(sum(known) / len(known) if known else None)
        scores.append(row_scores)
    return Judgement(scores, preferences=prefs, stats=stats)


class PairwiseJudge(Judge):
    """P(a ≻ b) for every pair within each group from ``compare(prompts, a, b) -> [M]``."""

    def __init__(self, name: str, compare: Callable[[list, list, list], Any]):
        self.name, self._compare = name, compare

    def judge(self, prompts, groups):
        pairs = _pairs_of(groups)
        if not pairs:
            return _pairwise_judgement(groups, pairs, [], {"judge/calls": 0.0})
        values = self._compare([prompts[g] for g, _, _ in pairs], [groups[g][i] for g, i, _ in pairs], [groups[g][j] for g, _, j in pairs])
        values = values.tolist() if torch.is_tensor(values) else list(values)
        return _pairwise_judgement(groups, pairs, [float(v) for v in values], {"judge/calls": float(len(pairs))})


# --------------------------------------------------------------------------------------------------
# LLM-as-judge: templates and robust parsing
# --------------------------------------------------------------------------------------------------
SCORE_TEMPLATE = "Rate the response to the request from {low} to {high}.\nRequest: {prompt}\nResponse: {completion}\nScore:"
CHOICE_TEMPLATE = "Which response to the request is better?\nRequest: {prompt}\nResponse A: {a}\nResponse B: {b}\nAnswer A or B:"

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_WORDS = {w: float(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_LEADING_CHOICE = re.compile(r"^[\s\W_]*(?:(?:answer|response|output|option|choice|assistant)\s*)?[:\-\s]*[\(\[\*\"']*([AB])(?![A-Za-z])", re.IGNORECASE)
_TOKEN_CHOICE = re.compile(r"(?<![A-Za-z])([AB])(?![A-Za-z])")


def parse_score(text: str, low: float = 1.0, high: float = 10.0) -> float | None:
    """The first number of ``text`` (digits like ``7``, ``8.5``, ``7/10``, ``**9**``, or a number word
    ``seven``) when it lies in ``[low, high]``; otherwise None (unparseable)."""
    if text is None:
        return None
    match = _NUMBER.search(text)
    value: float | None = float(match.group()) if match else None
    if value is None:
        words = re.findall(r"[a-z]+", text.lower())
        value = next((_WORDS[w] for w in words if w in _WORDS), None)
    if value is None or not low <= value <= high:
        return None
    return value


def parse_choice(text: str) -> float | None:
    """1.0 when ``text`` picks A, 0.0 when it picks B, None when it is unparseable or ambiguous.

    A leading choice wins (``A``, ``(B)``, ``**A**``, ``Answer: B``, ``Response A is better``); otherwise
    the single standalone capital ``A`` or ``B`` in the text; both or neither: None."""
    if text is None:
        return None
    lead = _LEADING_CHOICE.match(text)
    if lead:
        return 1.0 if lead.group(1).upper() == "A" else 0.0
    found = set(_TOKEN_CHOICE.findall(text))
    if len(found) == 1:
        return 1.0 if found.pop() == "A" else 0.0
    return None


def _text(value: Any) -> str:
    """A prompt or completion as text for a template (chat messages: their contents joined)."""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in value)
    return str(value)


class LLMJudge(Judge):
    """A causal LM as the judge (see the module docstring). ``model``/``tokenizer``: the judging LM."""

    name = "llm"

    def __init__(self, model, tokenizer, mode: str = "score", template: str | None = None, max_new_tokens: int = 6, low: float = 1.0,
                 high: float = 10.0, both_orders: bool = False, batch_size: int = 64, progress: bool = False):
        if mode not in ("score", "choice"):
            raise ValueError(f"llm judge: mode must be 'score' or 'choice', got {mode!r}")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.template = template or (SCORE_TEMPLATE if mode == "score" else CHOICE_TEMPLATE)
        self.max_new_tokens, self.low, self.high, self.both_orders = max_new_tokens, low, high, both_orders
        self.batch_size, self.progress = batch_size, progress

    def ask(self, queries: list[str]) -> list[str]:
        """The judge LM's greedy answers to ``queries`` (batched)."""
        if not queries:
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            samples = generate(self.model, self.tokenizer, queries, n=1, max_new_tokens=self.max_new_tokens, greedy=True,
                               batch_size=self.batch_size, progress=self.progress)
        finally:
            self.model.train(was_training)
        return [s.completion for s in samples]

    def judge(self, prompts, groups):
        return self._scores(prompts, groups) if self.mode == "score" else self._choices(prompts, groups)

    def _scores(self, prompts, groups):
        flat_p, flat_c = _flat(prompts, groups)
        queries = [self.template.format(prompt=_text(p), completion=_text(c), low=_num(self.low), high=_num(self.high)) for p, c in zip(flat_p, flat_c)]
        answers = self.ask(queries)
        scores = [parse_score(a, self.low, self.high) for a in answers]
        bad = sum(s is None for s in scores)
        stats = {"judge/calls": float(len(answers)), "judge/unparseable": float(bad), "judge/unparseable_rate": bad / max(len(answers), 1)}
        return Judgement(_regroup(scores, groups), answers=_regroup(answers, groups), stats=stats)

    def _choices(self, prompts, groups):
        pairs = _pairs_of(groups)
        orders = [(g, i, j) for g, i, j in pairs] + ([(g, j, i) for g, i, j in pairs] if self.both_orders else [])
        queries = [self.template.format(prompt=_text(prompts[g]), a=_text(groups[g][x]), b=_text(groups[g][y])) for g, x, y in orders]
        parsed = [parse_choice(a) for a in self.ask(queries)]
        probabilities: list[float | None] = []
        for k in range(len(pairs)):
            votes = [parsed[k]]
            if self.both_orders:
                swapped = parsed[k + len(pairs)]
                votes.append(None if swapped is None else 1.0 - swapped)
            known = [v for v in votes if v is not None]
            probabilities.append(sum(known) / len(known) if known else None)
        bad = sum(v is None for v in parsed)
        stats = {"judge/calls": float(len(parsed)), "judge/unparseable": float(bad), "judge/unparseable_rate": bad / max(len(parsed), 1)}
        return _pairwise_judgement(groups, pairs, probabilities, stats)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def rank_consistency(a: list[float | None], b: list[float | None]) -> float | None:
    """``(τ_b + 1)/2`` with Kendall's ``τ_b = (concordant − discordant) / sqrt((n − ties_a)(n − ties_b))`` over the
    ``n`` pairs of samples both lists score (ties in both lists at the same places are agreement: identical lists
    give 1); None with fewer than two such samples or when either list ties everything."""
    idx = [i for i in range(len(a)) if a[i] is not None and b[i] is not None]
    pairs = [(i, j) for n, i in enumerate(idx) for j in idx[n + 1 :]]
    sign_a = [(a[i] > a[j]) - (a[i] < a[j]) for i, j in pairs]
    sign_b = [(b[i] > b[j]) - (b[i] < b[j]) for i, j in pairs]
    denominator = (sum(x != 0 for x in sign_a) * sum(y != 0 for y in sign_b)) ** 0.5
    if not denominator:
        return None
    return (sum(x * y for x, y in zip(sign_a, sign_b)) / denominator + 1) / 2


class ConsistencyJudge(Judge):
    """CREAM (Wang et al. 2024): self-rewarding scores from ``current`` (the live policy as judge) and the rank
    agreement with ``previous`` (the same judge on the previous iterate's weights), which then moves to the
    live policy's weights for the next round."""

    def __init__(self, current: "LLMJudge", previous: "LLMJudge"):
        self.current, self.previous = current, previous
        self.name = f"cream:{current.name}"

    def judge(self, prompts, groups):
        from .references import copy_weights

        now = self.current.judge(prompts, groups)
        before = self.previous.judge(prompts, groups)
        consistency = [rank_consistency(x, y) for x, y in zip(now.scores, before.scores)]
        known = [c for c in consistency if c is not None]
        stats = {**now.stats, **{f"previous_{k}": v for k, v in before.stats.items()}, "cream/consistency": sum(known) / len(known) if known else float("nan")}
        copy_weights(self.current.model, self.previous.model)
        return Judgement(now.scores, answers=now.answers, stats=stats, consistency=consistency)


class NoJudge(Judge):
    name = "none"

    def judge(self, prompts, groups):
        return Judgement([[None] * len(g) for g in groups], stats={"judge/calls": 0.0})


# --------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------
def _need_task(env: JudgeEnv, what: str):
    if env.task is None:
        raise ValueError(f"judge {what!r} needs a task (task.name)")
    return env.task


@JUDGES.register("gold")
def _gold(env: JudgeEnv) -> Judge:
    task = _need_task(env, "gold")
    return ScalarJudge(f"gold:{task.name}", task.gold_rewards)


@JUDGES.register("reward")
def _reward(env: JudgeEnv, source: Any = "gold") -> Judge:
    if source == "gold":
        return _gold(env)
    reward = build_reward_source(source)
    return ScalarJudge(f"reward:{getattr(reward, 'name', 'reward')}", lambda p, c: reward.score(p, c, progress=env.progress))


@JUDGES.register("preference")
def _preference(env: JudgeEnv, model: str | None = None) -> Judge:
    if model is not None:
        from ..rewards.sources import PreferenceModelSource

        source = PreferenceModelSource(model)
        return PairwiseJudge(f"preference:{model}", lambda p, a, b: source.compare(p, a, b, progress=env.progress))
    task = _need_task(env, "preference")
    if hasattr(task, "preferences"):
        return PairwiseJudge(f"preference:{task.name}", task.preferences)
    if hasattr(task, "preference"):
        return PairwiseJudge(f"preference:{task.name}", lambda p, a, b: [task.preference(*x) for x in zip(p, a, b)])
    raise ValueError(f"judge 'preference': the {task.name} task has no preference oracle; give a preference model (model: <folder>)")


@JUDGES.register("llm")
def _llm(env: JudgeEnv, model: str = "policy", mode: str = "score", template: str | None = None, max_new_tokens: int = 6, low: float = 1.0,
         high: float = 10.0, both_orders: bool = False) -> Judge:
    if model == "policy":
        lm, tokenizer = env.model, env.tokenizer
    else:
        from ..models.loading import load_policy_for_inference, load_tokenizer

        lm, tokenizer = load_policy_for_inference(model), load_tokenizer(model)
    judge = LLMJudge(lm, tokenizer, mode, template, max_new_tokens, low, high, both_orders, env.batch_size, env.progress)
    judge.name = f"llm:{model}:{mode}"
    return judge


@JUDGES.register("cream")
def _cream(env: JudgeEnv, template: str | None = None, max_new_tokens: int = 6, low: float = 1.0, high: float = 10.0) -> Judge:
    import copy

    from ..models.reference import frozen

    current = _llm(env, "policy", "score", template, max_new_tokens, low, high)
    previous_env = JudgeEnv(task=env.task, model=frozen(copy.deepcopy(env.model)), tokenizer=env.tokenizer, batch_size=env.batch_size, progress=env.progress)
    return ConsistencyJudge(current, _llm(previous_env, "policy", "score", template, max_new_tokens, low, high))


@JUDGES.register("none")
def _none(env: JudgeEnv) -> Judge:
    return NoJudge()


def build_judge(spec: Any, env: JudgeEnv) -> Judge:
    """A judge from ``iterate.judge``: a registered name, ``{type: name, **params}``, or (anything else) a
    reward-source spec for the ``reward`` judge."""
    if isinstance(spec, str) and spec in JUDGES:
        name, params = spec, {}
    elif isinstance(spec, dict) and spec.get("type") in JUDGES:
        params = dict(spec)
        name = params.pop("type")
    else:
        name, params = "reward", {"source": spec}
    factory = JUDGES.get(name)
    try:
        check_params(factory, f"judge {name!r}", 1, params)
    except TypeError as e:
        raise ValueError(str(e)) from None
    return factory(env, **params)
