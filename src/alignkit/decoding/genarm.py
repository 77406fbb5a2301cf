"""GenARM decoding (Xu et al. 2025): sample from ``pi_base(y_t|.) * prod_i pi_r,i(y_t|.)^(w_i / beta)``, normalised
token by token, with one or several autoregressive reward models ``pi_r,i`` (``reward.type: arm``,
:mod:`alignkit.algorithms.reward.arm`) and weights ``w_i`` chosen at run time (multi-objective alignment without
retraining). An ARM may be smaller than the base model (weak-to-strong guidance): it only has to share the
tokenizer. Each ARM keeps its own KV cache in lockstep with the base model's.

``scale: std`` (ours, not the paper's) puts the ARMs on one scale before they are weighted: at every step each
ARM's next-token log-probs ``l_i(v)`` are replaced by ``(l_i(v) - m_i) / s_i``, where ``m_i`` and ``s_i`` are
their mean and standard deviation under the base model's next-token distribution ``pi_base``. The mean cancels in
the per-token normalisation; dividing by ``s_i`` makes ``w_i / beta`` the tilt in units of the ARM's own spread
over the tokens the base model would write, so an ARM with sharper log-probs no longer overrides the others. A
per-ARM temperature needs no option: ``log_softmax(z / tau) = log_softmax(z) / tau + const``, i.e. weight ``w / tau``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..rollout.local import CachedModelGuide, StepState
from .base import STRATEGIES, Context, Decoding
from .guided import ProductGuide, _name, as_list, check_backend, load_guides, run_guided, weighted_guides

SCALES = ("none", "std")


def genarm_alphas(beta: float, weights, count: int) -> list[float]:
    """The exponents ``w_i / beta`` of the ARMs (one weight for all, or one per ARM)."""
    if beta <= 0:
        raise ValueError(f"genarm: beta must be > 0 (got {beta})")
    ws = [float(w) for w in as_list(weights, "weights", "genarm")]
    if len(ws) == 1:
        ws = ws * count
    if len(ws) != count:
        raise ValueError(f"genarm: {count} ARMs but {len(ws)} weights")
    return [w / beta for w in ws]


def standardised(logp: torch.Tensor, base_probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(logp - m) / s`` per row, ``m`` and ``s`` the mean and standard deviation of ``logp`` under ``base_probs``
    (``s`` floored at ``eps``: an ARM flat over the base's support adds nothing there)."""
    mean = (base_probs * logp).sum(-1, keepdim=True)
    std = (base_probs * (logp - mean).square()).sum(-1, keepdim=True).sqrt()
    return (logp - mean) / std.clamp_min(eps)


class ScaledArmsGuide(ProductGuide):
    """``logits + sum_i alpha_i standardised(log pi_r,i)``, the standardisation under the base model's own
    next-token distribution (``softmax(logits)``, before any ARM); each ARM's KV cache in lockstep."""

    def __init__(self, guides: Sequence[CachedModelGuide], alphas: Sequence[float]):
        super().__init__(guides)
        self.alphas = [float(a) for a in alphas]

    def __call__(self, logits: torch.Tensor, state: StepState) -> torch.Tensor:
        base = logits.float()
        probs = torch.softmax(base, -1)
        out = base
        for g, alpha in zip(self.guides, self.alphas):
            arm_logits = g.state.logits if state.last_tokens is None else g.state.advance(g.model, state.last_tokens)
            out = out + alpha * standardised(torch.log_softmax(arm_logits.float(), -1), probs)
        return out.to(logits.dtype)


@STRATEGIES.register("genarm", family="reward-guided decoding", paper="Xu et al. 2025, GenARM")
def genarm(ctx: Context, arm=None, beta: float = 1.0, weights=1.0, scale: str = "none") -> Decoding:
    """``pi_base * prod_i pi_r,i^(w_i / beta)``: ``arm`` an ARM folder (``reward.type: arm``) or model, or a list;
    ``weights`` one per ARM (run-time trade-off between objectives); ``beta`` the KL strength (smaller: more
    reward); ``scale`` ``none`` (the paper's rule) or ``std`` (each ARM's log-probs standardised per step under
    the base model's next-token distribution before weighting)."""
    if scale not in SCALES:
        raise ValueError(f"genarm: scale must be one of {', '.join(SCALES)} (got {scale!r})")
    specs = as_list(arm, "arm=PATH (an autoregressive reward model, reward.type: arm; or a list)", "genarm")
    alphas = genarm_alphas(beta, weights, len(specs))
    if scale == "none":
        result = weighted_guides(ctx, "genarm", specs, alphas, role="arm")
    else:
        check_backend(ctx, "genarm")
        models = load_guides(ctx, specs, "genarm", "arm")
        result = run_guided(ctx, lambda prompts: ScaledArmsGuide([CachedModelGuide(m, 1.0, ctx.pad_id) for m in models], alphas))
        result.stats = {"alpha": alphas, "arms": [_name(s) for s in specs]}
    result.stats.update(beta=beta, weights=as_list(weights, "weights", "genarm"), scale=scale)
    return result
