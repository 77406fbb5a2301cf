"""Token-level strategies as guides on the public decode loop (:func:`alignkit.rollout.local.decode`).

* ``args`` (Khanov, Burapacheep & Li 2024, "ARGS: Alignment as Reward-Guided Search"): at every step the
  top-k next tokens of each row are scored as ``logit(v) + w * r(x, y_<t v)`` with a reward source on the
  decoded prefix + candidate (all rows x k candidates in one reward call); greedy (ARGS-greedy) or sampled
  from ``softmax`` of the scores over the k candidates (ARGS-stochastic).
* ``product`` (a product of experts; GenARM's decoding rule, Xu et al. 2025): ``log p(v) = log pi_base(v) +
  sum_i alpha_i log pi_guide_i(v) + const`` with one or several guide models, each keeping its own KV cache
  in lockstep with the batch (:class:`~alignkit.rollout.local.CachedModelGuide`). With an autoregressive
  reward model as the guide and ``alpha = 1 / beta`` this is GenARM's ``pi_base * pi_r^(1/beta)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..rollout.local import CachedModelGuide, Guide, Sampler, StepState, decode
from .base import STRATEGIES, Context, Decoding


class ARGSGuide(Guide):
    """ARGS's score ``logit + w * reward`` on each row's top-``k`` tokens; every other token gets ``-inf``.

    ``source``: a reward source (``score(prompts, completions)``); ``prompts``: the prompt (as the source
    reads it) of every job of the decode call, indexed by ``state.rows``. The reward of a candidate is that of
    the completion so far followed by the candidate token, decoded with ``tokenizer``."""

    def __init__(self, source, tokenizer, prompts: Sequence[Any], k: int = 10, w: float = 1.0):
        if k < 1:
            raise ValueError(f"ARGS: k must be >= 1 (got {k})")
        self.source, self.tokenizer, self.prompts, self.k, self.w = source, tokenizer, list(prompts), int(k), float(w)

    def candidate_texts(self, top: torch.Tensor, state: StepState) -> tuple[list[Any], list[str]]:
        """The (prompt, completion) pair of every row's every candidate token, row-major."""
        prompts, completions = [], []
        for row, done, cands in zip(state.rows.tolist(), state.completion.tolist(), top.tolist()):
            for token in cands:
                prompts.append(self.prompts[row])
                completions.append(self.tokenizer.decode(done + [token], skip_special_tokens=True))
        return prompts, completions

    def __call__(self, logits: torch.Tensor, state: StepState) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        values, top = logits.float().topk(k, dim=-1)
        prompts, completions = self.candidate_texts(top, state)
        rewards = self.source.score(prompts, completions).to(values.device).view(-1, k)
        scores = values + self.w * rewards
        out = torch.full_like(logits, float("-inf"), dtype=torch.float32).scatter(-1, top, scores)
        return out.to(logits.dtype)


class ProductGuide(Guide):
    """Several :class:`CachedModelGuide` s (model, weight) applied in turn: ``logits + sum_i w_i log_softmax(g_i)``,
    each guide's cache prefilled with the prompts, advanced with the sampled tokens, rows selected in lockstep."""

    def __init__(self, guides: Sequence[CachedModelGuide]):
        self.guides = list(guides)

    def prefill(self, state: StepState) -> None:
        for g in self.guides:
            g.prefill(state)

    def select(self, indices: torch.Tensor) -> None:
        for g in self.guides:
            g.select(indices)

    def __call__(self, logits: torch.Tensor, state: StepState) -> torch.Tensor:
        for g in self.guides:
            logits = g(logits, state)
        return logits

    def finish(self) -> None:
        for g in self.guides:
            g.finish()


def run_guided(ctx: Context, make_guide) -> Decoding:
    """Decode ``ctx.n`` completions per prompt with the guide ``make_guide(job_prompts)`` builds for each batch of
    jobs (``job_prompts``: the prompt of every job of the batch), on the same (seed, job id, step) streams as
    ``rollout.generate``. The samples' ``logprobs`` are those of the guided distribution (truncation included),
    ``Decoding.log_ratio`` is left to the caller (it needs the model's own log-probs)."""
    ids = ctx.prompt_ids()
    jobs = [(p, i) for p, i in zip(ctx.prompts, ids) for _ in range(ctx.n)]
    sampler = Sampler.from_settings(ctx.sampling.with_(truncated_logprobs=True))
    samples = []
    for start in range(0, len(jobs), max(1, ctx.batch_size)):
        chunk = jobs[start : start + ctx.batch_size]
        out = decode(ctx.model, [i for _, i in chunk], list(range(start, start + len(chunk))), sampler, ctx.sampling.max_new_tokens, ctx.stops,
                     guide=make_guide([p for p, _ in chunk]), pad_id=ctx.pad_id)
        for (prompt, prompt_ids), d in zip(chunk, out):
            logprobs = [0.0] * len(d.logprobs) if ctx.sampling.greedy else d.logprobs  # greedy: a deterministic policy
            samples.append(ctx.make_sample(prompt, prompt_ids, d.completion_ids, d.finished, logprobs))
    return Decoding("", samples, exact_logprobs=True)


def _name(spec) -> str:
    return str(spec) if isinstance(spec, (str, Path)) else type(spec).__name__


def check_backend(ctx: Context, name: str) -> None:
    if ctx.backend not in ("alignkit", "auto"):
        raise ValueError(f"decoding strategy {name!r} runs on alignkit's decode loop (a guide); backend {ctx.backend!r} cannot take it")


@STRATEGIES.register("args", family="reward-guided decoding", paper="Khanov et al. 2024, ARGS")
def args(ctx: Context, reward="gold", k: int = 10, w: float = 1.0) -> Decoding:
    """ARGS: top-``k`` next tokens scored by ``logit + w * reward(prefix + token)``; greedy with the call's
    ``greedy=True`` (ARGS-greedy), else sampled from the scores over the k candidates."""
    check_backend(ctx, "args")
    source = ctx.reward(reward)
    result = run_guided(ctx, lambda prompts: ARGSGuide(source, ctx.tokenizer, prompts, k=k, w=w))
    result.stats = {"k": k, "w": w, "greedy": ctx.sampling.greedy, "reward_sequences_per_token": k}
    return result


def load_guides(ctx: Context, specs: Sequence[Any], strategy: str, role: str = "guide") -> list:
    """The guide models of ``specs`` (folders or model objects), counted as ``role`` (``role0``, ``role1``, ...
    for several), each checked to share the model's vocabulary."""
    models = [ctx.load_model(spec, f"{role}{i}" if len(specs) > 1 else role) for i, spec in enumerate(specs)]
    vocab = ctx.model.get_output_embeddings().weight.shape[0]
    for spec, m in zip(specs, models):
        size = m.get_output_embeddings().weight.shape[0]
        if size != vocab:
            raise ValueError(f"{strategy}: {role} {_name(spec)} has a vocabulary of {size}, the model {vocab}; "
                             f"a {role} model must share the model's tokenizer")
    return models


def as_list(value, name: str, strategy: str = "product") -> list:
    """``value`` as a list (one item, or a list / tuple); ``ValueError`` naming the option when it is missing."""
    if value is None:
        raise ValueError(f"decoding strategy {strategy!r} needs {name}")
    return list(value) if isinstance(value, (list, tuple)) else [value]


@STRATEGIES.register("product", family="guided decoding (product of experts)", paper="GenARM (Xu et al. 2025) decoding rule; Hinton 2002")
def product(ctx: Context, guide=None, alpha=1.0) -> Decoding:
    """A product of experts ``pi_base * prod_i pi_guide_i^alpha_i``: ``guide`` a model folder or model object,
    or a list of them; ``alpha`` one weight or one per guide (chosen at run time; GenARM: ``alpha = 1 / beta``).
    Each guide keeps its own KV cache in lockstep with the batch."""
    return weighted_guides(ctx, "product", guide, alpha)


def weighted_guides(ctx: Context, strategy: str, guide, alpha, role: str = "guide") -> Decoding:
    """Decode with ``logits + sum_i alpha_i log_softmax(guide_i)``: ``guide`` one model (folder or object) or a
    list, ``alpha`` one weight (for every guide) or one per guide; each guide's KV cache in lockstep."""
    check_backend(ctx, strategy)
    specs = as_list(guide, f"{role}=PATH (or a list)", strategy)
    alphas = [float(a) for a in as_list(alpha, "alpha", strategy)]
    if len(alphas) == 1 and len(specs) > 1:
        alphas = alphas * len(specs)
    if len(alphas) != len(specs):
        raise ValueError(f"{strategy}: {len(specs)} {role} models but {len(alphas)} weights")
    models = load_guides(ctx, specs, strategy, role)
    result = run_guided(ctx, lambda prompts: ProductGuide([CachedModelGuide(m, a, ctx.pad_id) for m, a in zip(models, alphas)]))
    result.stats = {"alpha": alphas, f"{role}s": [_name(s) for s in specs]}
    return result
