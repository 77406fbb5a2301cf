"""Sequence-level strategies: plain sampling, best-of-N and rejection sampling toward pi * exp(r / beta).

Both reweighting strategies draw their candidates with the fast decoder's batch-independent streams: the
``N`` candidates of output ``j`` of prompt ``i`` are jobs ``(i * n + j) * N + c`` of
``rollout.generate(model, tokenizer, prompts, n=n * N, ...)``, so best-of-N keeps one of exactly the samples
plain sampling draws with the same seed.
"""

from __future__ import annotations

import math
import time

import torch

from ..rollout.local import splitmix64, uniform_stream
from .base import STRATEGIES, Context, Decoding

ACCEPT_SALT = 0x5EED_ACCE  # separates the acceptance uniforms from the token streams of the same job ids


def best_of_n_kl(N: int) -> float:
    """The analytic KL(pi_bon || pi) = log N - (N - 1) / N (Stiennon et al. 2020; Hilton & Gao); an upper bound
    on the true KL, exact for continuous rewards without ties (Beirami et al. 2024)."""
    return math.log(N) - (N - 1) / N


def best_of_n_log_ratio(selected: torch.Tensor, pool: torch.Tensor, N: int) -> torch.Tensor:
    """Estimated ``log pi_bon(y|x) / pi(y|x)`` of selected samples ``[P]`` from base-policy rewards ``pool [P, M]``.

    For a reward level l with CDF values F(l) and F(l-) under pi, the best of N iid samples has level l with
    probability F(l)^N - F(l-)^N, and given its level it is distributed as pi restricted to the level (the
    first maximum is kept), so ``pi_bon(y) / pi(y) = (F^N - F-^N) / (F - F-)`` (``N F^(N-1)`` without ties).
    F is estimated on the pool together with the selected sample itself (so the mass of its level is > 0)."""
    m = pool.shape[1]
    le = (pool <= selected[:, None]).sum(-1).double() + 1
    lt = (pool < selected[:, None]).sum(-1).double()
    hi, lo = le / (m + 1), lt / (m + 1)
    return (torch.log(hi.pow(N) - lo.pow(N)) - torch.log(hi - lo)).float()


def acceptance_uniforms(seed: int | None, job_ids: list[int]) -> torch.Tensor:
    """One uniform in (0, 1) per candidate for the accept / reject decision, from the (seed, job id) stream
    (salted, so independent of the job's token draws); the global RNG without a seed."""
    if seed is None:
        return torch.rand(len(job_ids))
    base = splitmix64(torch.tensor([seed], dtype=torch.int64))
    keys = splitmix64(base ^ torch.tensor(job_ids, dtype=torch.int64))
    return uniform_stream(splitmix64(keys + ACCEPT_SALT), 1)[:, 0]


def acceptance_probabilities(rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp((r_i - max_j r_j) / beta)`` over the last dimension (the candidates of one draw)."""
    return torch.exp((rewards - rewards.max(-1, keepdim=True).values) / beta)


@STRATEGIES.register("sample", family="sampling", paper="-")
def plain_sample(ctx: Context) -> Decoding:
    """Plain sampling with the call's settings (the baseline every other strategy is measured against)."""
    samples = ctx.sample(ctx.n, sampling=ctx.sampling.with_(truncated_logprobs=True))
    if ctx.sampling.greedy:
        for s in samples:
            s.logprobs = [0.0] * len(s.completion_ids)  # a deterministic policy
    return Decoding("sample", samples, exact_logprobs=all(s.logprobs is not None for s in samples))


def _candidates(ctx: Context, N: int, reward):
    if N < 1:
        raise ValueError(f"N must be >= 1 (got {N})")
    source = ctx.reward(reward)
    candidates = ctx.sample(ctx.n * N)
    rewards = source.score([s.prompt for s in candidates], [s.completion for s in candidates]).view(len(ctx.prompts) * ctx.n, N)
    return source, candidates, rewards


@STRATEGIES.register("best_of_n", family="reranking", paper="Stiennon et al. 2020; Beirami et al. 2024 (KL)")
def best_of_n(ctx: Context, N: int = 4, reward="gold", kl_samples: int = 0) -> Decoding:
    """Sample ``N`` candidates per output, score them with ``reward`` (any reward source spec), keep the best
    (the first maximum). ``kl_samples`` > 0 draws that many extra base samples per prompt (other streams) to
    estimate KL(pi_bon || pi) from samples (:func:`best_of_n_log_ratio`) beside the analytic value."""
    source, candidates, rewards = _candidates(ctx, N, reward)
    best = rewards.argmax(-1)
    samples = [candidates[g * N + int(b)] for g, b in enumerate(best.tolist())]
    selected = rewards.gather(-1, best[:, None]).squeeze(-1)
    stats = {"N": N, "kl_analytic": best_of_n_kl(N), "reward_selected": float(selected.mean()), "reward_candidates": float(rewards.mean())}
    log_ratio = None
    if kl_samples > 0:
        offset = len(candidates)  # stream ids after the candidates'
        pool_ids = [offset + i * kl_samples + m for i in range(len(ctx.prompts)) for m in range(kl_samples)]
        began = time.perf_counter()
        before = (ctx.cost.tokens_generated, dict(ctx.cost.forwards), dict(ctx.cost.tokens_processed))
        pool = ctx.sample(kl_samples, job_ids=pool_ids)
        ctx.cost.tokens_generated, ctx.cost.forwards, ctx.cost.tokens_processed = before  # the estimate is not the strategy's cost
        pool_r = source.uncounted([s.prompt for s in pool], [s.completion for s in pool]).view(len(ctx.prompts), kl_samples)
        pool_r = pool_r.repeat_interleave(ctx.n, dim=0)
        ctx.cost.estimate_s += time.perf_counter() - began
        ratio = best_of_n_log_ratio(selected, pool_r, N)
        log_ratio = ratio.tolist()
        stats["kl_sampled"] = float(ratio.mean())
        stats["kl_sampled_se"] = float(ratio.std() / math.sqrt(len(ratio))) if len(ratio) > 1 else 0.0
        stats["kl_samples"] = kl_samples
    return Decoding("best_of_n", samples, stats=stats, log_ratio=log_ratio, rewards=selected.tolist())


@STRATEGIES.register("rejection", family="reranking", paper="Liu et al. 2024, Statistical Rejection Sampling (RSO), Algorithm 1")
def rejection(ctx: Context, N: int = 8, beta: float = 1.0, reward="gold") -> Decoding:
    """Rejection sampling toward ``pi(y|x) * exp(r(x, y) / beta)`` (RSO's rule): of ``N`` candidates per output,
    candidate ``i`` is accepted when ``u_i < exp((r_i - r_max) / beta)`` (``r_max`` the best of the N, which is
    always accepted); the output is the first accepted candidate. Reports the acceptance rate; ``log_ratio``
    is the target's ``r / beta - log Z`` with ``Z = mean_i exp(r_i / beta)`` estimated on the candidates."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (got {beta})")
    source, candidates, rewards = _candidates(ctx, N, reward)
    probs = acceptance_probabilities(rewards, beta)
    u = acceptance_uniforms(ctx.sampling.seed, list(range(len(candidates)))).view_as(probs)
    accepted = u < probs
    accepted |= rewards == rewards.max(-1, keepdim=True).values  # exp(0) = 1: the best is always accepted
    first = accepted.int().argmax(-1)
    samples = [candidates[g * N + int(f)] for g, f in enumerate(first.tolist())]
    chosen = rewards.gather(-1, first[:, None]).squeeze(-1)
    log_z = torch.logsumexp(rewards / beta, -1) - math.log(N)
    stats = {"N": N, "beta": beta, "acceptance_rate": float(accepted.float().mean()), "accepted_per_prompt": float(accepted.float().sum(-1).mean()),
             "reward_selected": float(chosen.mean()), "reward_candidates": float(rewards.mean())}
    log_ratio = (chosen / beta - log_z).tolist()
    stats["kl_sampled"] = sum(log_ratio) / len(log_ratio)
    return Decoding("rejection", samples, stats=stats, log_ratio=log_ratio, rewards=chosen.tolist())
