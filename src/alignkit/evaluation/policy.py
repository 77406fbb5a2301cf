"""Evaluating a policy on a task: mean gold reward, KL to a reference, length, samples.

KL(π‖π_ref) is estimated on the policy's own samples (temperature 1) as the mean of the sequence-level
k1 estimator Σ_t [log π(y_t|·) − log π_ref(y_t|·)], which is unbiased; its standard error is reported.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from ..rollout.generate import generate, sample_logprobs
from .metrics import kl_estimates, mean_and_se


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
) -> PolicyEval:
    samples = generate(model, tokenizer, prompts, n=n_samples, max_new_tokens=max_new_tokens, seed=seed)
    rewards = [task.gold_reward(s.prompt, s.completion) for s in samples]
    kl = kl_se = None
    if reference is not None:
        logp = sample_logprobs(model, samples, tokenizer.pad_token_id)
        ref = sample_logprobs(reference, samples, tokenizer.pad_token_id)
        estimates = kl_estimates(logp.tolist(), ref.tolist())
        kl, kl_se = estimates["kl_k1"], estimates["kl_k1_se"]
    malformed = sum(task.parse(s.prompt, s.completion) is None for s in samples) / len(samples)
    return PolicyEval(
        name=name,
        gold_reward=mean_and_se(rewards)[0],
        gold_reward_se=mean_and_se(rewards)[1],
        kl=kl,
        kl_se=kl_se,
        length=statistics.fmean(len(s.completion_ids) for s in samples),
        malformed=malformed,
        n=len(samples),
        samples=[{"prompt": s.prompt, "completion": s.completion, "gold_reward": r} for s, r in list(zip(samples, rewards))[:keep_samples]],
    )
