"""Evaluation metrics as pure functions (lists or tensors in, floats out), each checked by hand-worked tests.

* :func:`mean_and_se` — mean gold reward (or any score) with its standard error.
* :func:`win_rate` — P(policy beats reference) from paired scores, ties count 1/2;
  :func:`win_rate_from_preferences` — the same from a preference oracle's P(a ≻ b).
* :func:`kl_estimates` — KL(π‖π_ref) from samples of π: the sequence-level ``k1`` (``log π − log π_ref``,
  unbiased, can be negative) and ``k3`` (``e^{−d} + d − 1`` with ``d = log π − log π_ref``, unbiased
  and ≥ 0, lower variance when π is close to π_ref), with standard errors.
* :func:`distinct_n` and :func:`self_bleu` — diversity of a set of samples.
* :func:`implicit_reward_accuracy` — held-out preference accuracy of the implicit reward
  ``β (log π(y|x) − log π_ref(y|x))`` (ties count 1/2).
* :func:`logprob_curves` — chosen / rejected log-prob curves from a run's ``metrics.jsonl`` records.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Sequence

Number = float | int


def _floats(values: Any) -> list[float]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [float(v) for v in values]


def mean_and_se(values: Any) -> tuple[float, float]:
    """(mean, standard error of the mean with the n−1 standard deviation); (nan, nan) for no values."""
    xs = _floats(values)
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, 0.0
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var / len(xs))


def win_rate(policy_scores: Any, reference_scores: Any) -> float:
    """Fraction of paired comparisons the policy wins (score strictly higher), ties counting 1/2."""
    a, b = _floats(policy_scores), _floats(reference_scores)
    if len(a) != len(b):
        raise ValueError(f"win_rate: {len(a)} policy scores but {len(b)} reference scores")
    if not a:
        return math.nan
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def win_rate_from_preferences(probabilities: Any) -> float:
    """Mean of an oracle's P(policy sample ≻ reference sample) over pairs (expected win rate)."""
    ps = _floats(probabilities)
    if any(not 0.0 <= p <= 1.0 for p in ps):
        raise ValueError("win_rate_from_preferences: probabilities must lie in [0, 1]")
    return sum(ps) / len(ps) if ps else math.nan


def kl_estimates(logp: Any, ref_logp: Any) -> dict[str, float]:
    """KL(π‖π_ref) from sequence log-probs of samples drawn from π (one value per sample).

    ``k1 = mean(d)`` and ``k3 = mean(exp(−d) + d − 1)`` with ``d = log π(y) − log π_ref(y)``; both are
    unbiased for sequences sampled from π. Returns ``kl_k1``, ``kl_k1_se``, ``kl_k3``, ``kl_k3_se``."""
    lp, rp = _floats(logp), _floats(ref_logp)
    if len(lp) != len(rp):
        raise ValueError(f"kl_estimates: {len(lp)} log-probs but {len(rp)} reference log-probs")
    d = [x - y for x, y in zip(lp, rp)]
    # exp(-d) overflows for d < -709: such a sample means the policy is far below the reference there
    k3 = [math.exp(min(-x, 700.0)) + x - 1.0 for x in d]
    k1_mean, k1_se = mean_and_se(d)
    k3_mean, k3_se = mean_and_se(k3)
    return {"kl_k1": k1_mean, "kl_k1_se": k1_se, "kl_k3": k3_mean, "kl_k3_se": k3_se}


def _tokens(text: str | Sequence[Any]) -> list[Any]:
    return text.split() if isinstance(text, str) else list(text)


def _ngrams(tokens: Sequence[Any], n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Iterable[str | Sequence[Any]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of all texts (whitespace tokens, or given token lists);
    0.0 when the texts hold no n-gram."""
    grams = [g for t in texts for g in _ngrams(_tokens(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu(hypothesis: str | Sequence[Any], references: Sequence[str | Sequence[Any]], max_n: int = 4) -> float:
    """Sentence BLEU with clipped counts over several references, the closest-length brevity penalty and
    add-one smoothing of the n-gram precisions for n > 1 (Lin & Och 2004), so short sentences do not give 0.

    An n-gram order longer than the hypothesis is left out of the geometric mean."""
    hyp = _tokens(hypothesis)
    refs = [_tokens(r) for r in references]
    if not hyp or not refs:
        return 0.0
    log_p, orders = 0.0, 0
    for n in range(1, max_n + 1):
        h = Counter(_ngrams(hyp, n))
        total = sum(h.values())
        if total == 0:
            break
        best: Counter = Counter()
        for r in refs:
            for g, c in Counter(_ngrams(r, n)).items():
                best[g] = max(best[g], c)
        matched = sum(min(c, best[g]) for g, c in h.items())
        if n == 1:
            if matched == 0:
                return 0.0
            p = matched / total
        else:
            p = (matched + 1) / (total + 1)
        log_p += math.log(p)
        orders += 1
    ref_len = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    bp = 1.0 if len(hyp) > ref_len else math.exp(1 - ref_len / len(hyp))
    return bp * math.exp(log_p / orders)


def self_bleu(texts: Sequence[str | Sequence[Any]], max_n: int = 4, max_texts: int | None = 200) -> float:
    """Mean BLEU of each text against all the others (higher = less diverse); only the first
    ``max_texts`` texts are used (the cost is quadratic). nan for fewer than two texts."""
    items = list(texts)[:max_texts] if max_texts else list(texts)
    if len(items) < 2:
        return math.nan
    scores = [bleu(t, items[:i] + items[i + 1 :], max_n) for i, t in enumerate(items)]
    return sum(scores) / len(scores)


def implicit_rewards(logp: Any, ref_logp: Any, beta: float = 1.0) -> list[float]:
    """``β (log π(y|x) − log π_ref(y|x))`` per sequence."""
    return [beta * (x - y) for x, y in zip(_floats(logp), _floats(ref_logp), strict=True)]


def implicit_reward_accuracy(chosen_logp: Any, rejected_logp: Any, ref_chosen_logp: Any, ref_rejected_logp: Any, beta: float = 1.0) -> float:
    """Fraction of held-out pairs whose chosen completion gets the higher implicit reward
    ``β (log π − log π_ref)`` (ties 1/2). β > 0 does not change the ranking; it is kept so the margins
    reported elsewhere are on the training scale."""
    rc = implicit_rewards(chosen_logp, ref_chosen_logp, beta)
    rr = implicit_rewards(rejected_logp, ref_rejected_logp, beta)
    return win_rate(rc, rr)


def logprob_curves(records: Iterable[dict[str, Any]], keys: Sequence[str] = ("logps/chosen", "logps/rejected")) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` from metrics.jsonl records (training and ``eval/`` keys both)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key in keys:
            for name in (key, f"eval/{key}"):
                if name in record and record[name] is not None and "step" in record:
                    out.setdefault(name, []).append((int(record["step"]), float(record[name])))
    return out
