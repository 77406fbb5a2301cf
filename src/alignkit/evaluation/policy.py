"""Evaluating a policy on a task's held-out prompts.

:func:`evaluate_policy` gives the mean gold reward, KL to a reference, length and a few samples
(:class:`PolicyEval`). :class:`ReferenceEvaluator` evaluates many policies against one reference model,
loaded and sampled once, and adds the comparison metrics of ``alignkit bench`` and ``alignkit eval``: k1 and
k3 KL, win rate against the reference's own samples, words, diversity, per-attribute gold and a proxy score.

KL(π‖π_ref) is estimated on the policy's own samples (temperature 1) as the mean of the sequence-level
k1 estimator Σ_t [log π(y_t|·) − log π_ref(y_t|·)], which is unbiased; its standard error is reported.

A *policy = model + decoding strategy* (``strategy=`` a :mod:`alignkit.decoding` name, ``strategy_options``
its options) is evaluated the same way on the strategy's samples: the KL uses the strategy's own sequence
log-probs (exact for token-level strategies, the strategy's estimate for best-of-N / rejection sampling,
see ``docs/decoding.md``) against ``reference`` — by default the model itself, i.e. the KL the strategy
pays to its base model — and the strategy's cost and statistics are reported beside.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..models.loading import load_policy_for_inference, load_tokenizer
from ..rollout.generate import Sample, generate, sample_logprobs
from .groups import policy_group_metrics
from .metrics import distinct_n, kl_estimates, mean_and_se, self_bleu, win_rate, win_rate_from_preferences


@dataclass
class PolicyEval:
    name: str
    gold_reward: float
    gold_reward_se: float
    kl: float | None
    kl_se: float | None
    length: float
    malformed: float
    n: int
    samples: list[dict[str, Any]] = field(default_factory=list)
    strategy: str | None = None  # the decoding strategy of a policy = model + strategy (None: plain sampling)
    strategy_stats: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None  # decoding.Cost.flat(): forward passes, tokens, reward calls, wall time

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def warning(self) -> str | None:
        """A one-line warning when most samples are malformed for the task (:func:`malformed_warning`)."""
        return malformed_warning(self.malformed)


MALFORMED_LIMIT = 0.5  # above this fraction of malformed samples the task is probably not the model's


def malformed_warning(malformed: float, limit: float = MALFORMED_LIMIT) -> str | None:
    """The warning for a model whose samples are mostly malformed for a built-in task (a chat model on the
    synthetic sentiment task scores "100% malformed"): its gold reward says nothing about the model."""
    if malformed is None or not malformed > limit:
        return None
    return (f"the model writes mostly text the task's gold reward cannot parse ({100 * malformed:.0f}% malformed): "
            "is this the task it was trained for? For your own data use --data/--reward")


@dataclass
class ScoredSamples:
    """A policy's samples with their gold rewards and, when scored against a reference, the KL estimates."""

    samples: list[Sample]
    gold: list[float]
    kl: dict[str, float] | None = None  # kl_k1, kl_k1_se, kl_k3, kl_k3_se (metrics.kl_estimates)

    @property
    def prompts(self) -> list[str]:
        return [s.prompt for s in self.samples]

    @property
    def completions(self) -> list[str]:
        return [s.completion for s in self.samples]

    def length(self) -> float:
        """Mean completion length in tokens."""
        return mean_and_se([len(s.completion_ids) for s in self.samples])[0]

    def malformed(self, task) -> float:
        """Fraction of completions the task cannot parse."""
        return sum(task.parse(p, c) is None for p, c in zip(self.prompts, self.completions)) / len(self.samples)

    def examples(self, n: int, gold_key: str = "gold_reward") -> list[dict[str, Any]]:
        """The first ``n`` samples as ``{"prompt", "completion", gold_key}`` rows."""
        return [{"prompt": s.prompt, "completion": s.completion, gold_key: g} for s, g in list(zip(self.samples, self.gold))[:n]]


def sample_and_score(model, tokenizer, task, prompts: list[str], reference=None, n_samples: int = 1, max_new_tokens: int = 48,
                     seed: int = 0) -> ScoredSamples:
    """``n_samples`` samples per prompt (temperature 1, seeded), scored by the task's gold reward and, given a
    reference model, by the KL estimates on their sequence log-probs under the policy and the reference."""
    samples = generate(model, tokenizer, prompts, n=n_samples, max_new_tokens=max_new_tokens, seed=seed)
    scored = ScoredSamples(samples, task.gold_rewards([s.prompt for s in samples], [s.completion for s in samples]))
    if reference is not None:
        pad = tokenizer.pad_token_id
        scored.kl = kl_estimates(sample_logprobs(model, samples, pad), sample_logprobs(reference, samples, pad))
    return scored


def strategy_and_score(model, tokenizer, task, prompts: list[str], strategy: str, options: dict[str, Any] | None = None, reference=None,
                       n_samples: int = 1, max_new_tokens: int = 48, seed: int = 0, kl_samples: int = 16):
    """``n_samples`` outputs per prompt of the policy ``model`` + decoding ``strategy`` (temperature 1, seeded),
    scored by the task's gold reward and by the KL estimates of the strategy's sequence log-probs against
    ``reference`` (default: ``model``). A strategy that takes ``kl_samples`` (best-of-N) gets ``kl_samples``
    unless ``options`` set it. Returns ``(ScoredSamples, decoding result)``."""
    import inspect

    from ..decoding import STRATEGIES, decode_with, strategy_names

    options = dict(options or {})
    if strategy in strategy_names() and "kl_samples" in inspect.signature(STRATEGIES.get(strategy)).parameters:
        options.setdefault("kl_samples", kl_samples)
    result = decode_with(strategy, model, tokenizer, prompts, n=n_samples, max_new_tokens=max_new_tokens, seed=seed, **options)
    samples = result.samples
    scored = ScoredSamples(samples, task.gold_rewards([s.prompt for s in samples], [s.completion for s in samples]))
    pad = tokenizer.pad_token_id
    logps = result.logps(model, pad)
    if logps is not None:
        scored.kl = kl_estimates(logps, sample_logprobs(reference if reference is not None else model, samples, pad))
    return scored, result


def evaluate_policy(
    name: str,
    model,
    tokenizer,
    task,
    prompts: list[str],
    reference=None,
    n_samples: int = 1,
    max_new_tokens: int = 48,
    seed: int = 0,
    keep_samples: int = 8,
    strategy: str | None = None,
    strategy_options: dict[str, Any] | None = None,
) -> PolicyEval:
    """Mean gold reward (± s.e.), KL (k1 ± s.e.) to ``reference`` when given, length, malformed fraction and
    the first ``keep_samples`` samples of ``n_samples`` samples per prompt. With ``strategy`` (a decoding
    strategy name and its ``strategy_options``), the policy is ``model`` + that strategy: its samples, its KL
    (to ``reference``, default ``model``), its statistics and cost."""
    result = None
    if strategy is None:
        scored = sample_and_score(model, tokenizer, task, prompts, reference, n_samples, max_new_tokens, seed)
    else:
        scored, result = strategy_and_score(model, tokenizer, task, prompts, strategy, strategy_options, reference, n_samples, max_new_tokens, seed)
    gold_reward, gold_reward_se = mean_and_se(scored.gold)
    kl = scored.kl or {}
    return PolicyEval(
        name=name,
        gold_reward=gold_reward,
        gold_reward_se=gold_reward_se,
        kl=kl.get("kl_k1"),
        kl_se=kl.get("kl_k1_se"),
        length=scored.length(),
        malformed=scored.malformed(task),
        n=len(scored.samples),
        samples=scored.examples(keep_samples),
        strategy=strategy,
        strategy_stats=result.stats if result is not None else None,
        cost=result.cost.flat() if result is not None else None,
    )


class ReferenceEvaluator:
    """Evaluates policies against one reference model on fixed prompts. The reference is loaded once and its
    own samples (seed + 1000) are drawn once, for the win rate; ``proxy`` (a reward source) adds its mean score."""

    def __init__(self, task, tokenizer, reference, prompts: list[str], n_samples: int = 2, max_new_tokens: int = 40, seed: int = 1, proxy=None):
        self.task, self.tokenizer, self.reference, self.prompts, self.proxy = task, tokenizer, reference, prompts, proxy
        self.n_samples, self.max_new_tokens, self.seed = n_samples, max_new_tokens, seed
        self.reference_samples = sample_and_score(reference, tokenizer, task, prompts, None, n_samples, max_new_tokens, seed + 1000)

    @classmethod
    def from_dir(cls, task, reference_dir: str | Path, n_prompts: int = 128, **options) -> ReferenceEvaluator:
        """Loads the reference (and tokenizer) from ``reference_dir``; the prompts are the task's first
        ``n_prompts`` test prompts; ``options`` as for the constructor."""
        return cls(task, load_tokenizer(reference_dir), load_policy_for_inference(reference_dir), task.prompts(n_prompts, "test"), **options)

    def evaluate(self, model_or_dir, name: str = "", strategy: str | None = None, strategy_options: dict[str, Any] | None = None) -> dict[str, Any]:
        """One evaluation point: gold reward (± s.e.), KL (k1, k3), win rate, length, words, malformed fraction,
        distinct-2, self-BLEU, ``gold/<part>`` for tasks that split their gold reward, proxy and six samples.
        With ``strategy`` the policy is the model + that decoding strategy: its KL (to the reference, when the
        strategy has log-probs; else ``None``), ``cost/...`` and ``strategy/...`` keys are added."""
        model = load_policy_for_inference(model_or_dir) if isinstance(model_or_dir, (str, Path)) else model_or_dir
        point: dict[str, Any] = {"name": name}
        if strategy is None:
            scored = sample_and_score(model, self.tokenizer, self.task, self.prompts, self.reference, self.n_samples, self.max_new_tokens, self.seed)
        else:
            scored, result = strategy_and_score(model, self.tokenizer, self.task, self.prompts, strategy, strategy_options, self.reference,
                                                self.n_samples, self.max_new_tokens, self.seed)
            point.update(result.cost.flat())
            point.update({f"strategy/{k}": v for k, v in result.stats.items() if not isinstance(v, (list, dict))})
        point["gold_reward"], point["gold_reward_se"] = mean_and_se(scored.gold)
        point.update(scored.kl or {"kl_k1": None, "kl_k3": None})
        point["kl"] = point["kl_k1"]
        point["win_rate"] = self.win_rate(scored)
        point["length"] = scored.length()
        point["words"] = mean_and_se([len(c.split()) for c in scored.completions])[0]
        point["malformed"] = scored.malformed(self.task)
        point["distinct_2"] = distinct_n(scored.completions, 2)
        point["self_bleu"] = self_bleu(scored.completions, max_texts=100)
        point.update(self.gold_parts(scored))
        point.update(policy_group_metrics(self.task, scored.prompts, scored.completions, self.reference_samples.completions))
        if self.proxy is not None:
            point["proxy"] = float(self.proxy.score(scored.prompts, scored.completions).float().mean())
        point["samples"] = scored.examples(6, gold_key="gold")
        return point

    def win_rate(self, scored: ScoredSamples) -> float:
        """How often the policy's sample beats the reference's sample for the same prompt: by the task's
        preference oracle when it has one, else by gold reward."""
        if hasattr(self.task, "preference"):
            ref = self.reference_samples.completions
            return win_rate_from_preferences([self.task.preference(p, a, b) for p, a, b in zip(scored.prompts, scored.completions, ref)])
        return win_rate(scored.gold, self.reference_samples.gold)

    def gold_parts(self, scored: ScoredSamples) -> dict[str, float]:
        """``gold/<part>``: the mean gold reward of each attribute or group, for tasks whose gold reward has parts."""
        out: dict[str, float] = {}
        for option in ("per_attribute", "per_group"):
            try:
                parts = self.task.gold_rewards(scored.prompts, scored.completions, **{option: True})
            except TypeError:
                continue
            out.update({f"gold/{key}": mean_and_se(values)[0] for key, values in parts.items()})
        return out
