"""Off-policy corrections: training π on samples drawn by a behaviour policy μ.

μ is whatever produced the tokens — a policy version a few updates old (asynchronous RL), or a rollout
engine whose log-probs differ from the trainer's for the same weights (vLLM in bf16, quantised
rollouts). The per-token importance ratio between the trainer's log-probs at the sampling weights
(``old_logp``, π_old; for the decoupled objective the proximal policy π_prox) and the behaviour
log-probs (``behaviour_logp``, μ) is::

    ρ_t = exp(old_logp_t - behaviour_logp_t)          (detached; a constant of the update)

A correction turns ρ into a per-token weight ``w_t`` (0 for tokens it drops) that multiplies the
per-token policy-gradient loss of :data:`~alignkit.objectives.policy.POLICY_LOSSES`; the PPO ratio and
clip keep their anchor at π_old (π_prox), so the two factors of π/μ = (π/π_old)·(π_old/μ) are handled
separately. Registry :data:`OFF_POLICY_CORRECTIONS`:

=============  ============================================================================================
``none``       ``w_t = 1`` (the behaviour policy is ignored)
``tis``        truncated IS (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
               RL training"): ``w_t = min(ρ_t, cap)``, ``cap`` 2 by default; ``cap=None`` is plain IS
``mis``        masked IS (IcePop, Ring-1T 2025): ``w_t = ρ_t · 1[low <= ρ_t <= high]`` (``weighted=False``:
               ``1[...]``), defaults ``low=0.5, high=5``; out-of-band tokens leave the gradient
``seq_tis``    one weight per sequence ``min(ρ̄_i, cap)``; ``ρ̄_i`` the geometric mean of its ``ρ_t``
               (``ratio="geometric"``, default) or their product (``ratio="product"``, the exact sequence IS)
``seq_mis``    a whole sequence is dropped when ``ρ̄_i`` leaves ``[low, high]``; kept ones weigh ``ρ̄_i``
               (``weighted=True``) or 1 (default: a rejection filter, as geometric-mean rejection is used)
``decoupled``  decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy optimization"):
               ``w_t = π_prox/μ`` (uncapped unless ``cap``), with ``old_logp`` = π_prox, so the clip
               ``clip(π/π_prox)`` and the importance weight ``π_prox/μ`` use different policies
=============  ============================================================================================

Dropped tokens keep their place in the aggregation's denominator (IcePop normalises by every sampled
token), so the engine's loss weights (completion tokens) are unchanged by a correction.

Shapes: ``old_logp``, ``behaviour_logp``, ``mask`` ``[B, T]``; values at masked positions are never read.
Entry points: :func:`off_policy_correction` (weights and metrics) and :func:`corrected_policy_loss` (a
policy loss of :data:`POLICY_LOSSES` with the weights applied, then aggregated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..core.registry import Registry, check_params
from ._common import masked, masked_mean, valid_mask
from .aggregation import aggregate
from .policy import POLICY_LOSSES, _token_adv

__all__ = ["OFF_POLICY_CORRECTIONS", "Correction", "corrected_policy_loss", "off_policy_correction"]


@dataclass(frozen=True)
class Correction:
    """The weights of one correction over a batch.

    ``weight`` ``[B, T]``: detached, 0 at masked positions and at dropped tokens. ``kept`` ``[B, T]`` bool:
    valid tokens whose weight is not forced to 0 by a mask. ``metrics``: detached 0-d tensors —
    ``is_ratio_mean`` (token mean of ρ), ``is_weight_mean`` (token mean of w), ``mismatch_kl`` (k3
    estimate ``ρ - 1 - log ρ`` of KL(μ || π_old) on tokens sampled from μ), ``is_truncated_frac`` (share of
    valid tokens whose weight the cap lowered), ``is_masked_frac`` and ``is_masked_tokens`` (dropped
    tokens, share and count)."""

    weight: Tensor
    kept: Tensor
    metrics: dict[str, Tensor]


OFF_POLICY_CORRECTIONS: Registry[Callable[..., tuple[Tensor, Tensor, Tensor]]] = Registry("off-policy correction")
"""Entries ``fn(log_ratio [B, T], valid [B, T], **params) -> (weight, kept, truncated)``: the weight before
masking, the kept tokens and the tokens whose weight the cap lowered (bool tensors)."""


def _check_cap(cap: float | None) -> None:
    if cap is not None and not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"cap must be a finite positive number or None, got {cap!r}")


def _check_band(low: float, high: float) -> None:
    if not (0 <= low <= 1 <= high):
        raise ValueError(f"the kept band [low, high] must hold 1 (0 <= low <= 1 <= high), got [{low}, {high}]")


def _truncate(ratio: Tensor, valid: Tensor, cap: float | None) -> tuple[Tensor, Tensor, Tensor]:
    _check_cap(cap)
    if cap is None:
        return ratio, valid, torch.zeros_like(valid)
    return ratio.clamp(max=cap), valid, valid & (ratio > cap)


def _sequence_ratio(log_ratio: Tensor, valid: Tensor, ratio: str) -> Tensor:
    """ρ̄_i broadcast over the row's tokens: geometric mean (exp of the mean log ratio) or product."""
    if ratio not in ("geometric", "product"):
        raise ValueError(f"ratio must be 'geometric' or 'product', got {ratio!r}")
    total = masked(log_ratio, valid).sum(dim=1, keepdim=True)
    if ratio == "geometric":
        total = total / valid.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.exp(total).expand_as(log_ratio)


def _in_band(ratio: Tensor, valid: Tensor, low: float, high: float) -> Tensor:
    _check_band(low, high)
    return valid & (ratio >= low) & (ratio <= high)


@OFF_POLICY_CORRECTIONS.register("none")
def _none(log_ratio: Tensor, valid: Tensor):
    return torch.ones_like(log_ratio), valid, torch.zeros_like(valid)


@OFF_POLICY_CORRECTIONS.register("tis")
def _tis(log_ratio: Tensor, valid: Tensor, cap: float | None = 2.0):
    return _truncate(torch.exp(log_ratio), valid, cap)


@OFF_POLICY_CORRECTIONS.register("decoupled")
def _decoupled(log_ratio: Tensor, valid: Tensor, cap: float | None = None):
    return _truncate(torch.exp(log_ratio), valid, cap)


@OFF_POLICY_CORRECTIONS.register("mis")
def _mis(log_ratio: Tensor, valid: Tensor, low: float = 0.5, high: float = 5.0, weighted: bool = True):
    ratio = torch.exp(log_ratio)
    weight = ratio if weighted else torch.ones_like(ratio)
    return weight, _in_band(ratio, valid, low, high), torch.zeros_like(valid)


@OFF_POLICY_CORRECTIONS.register("seq_tis")
def _seq_tis(log_ratio: Tensor, valid: Tensor, cap: float | None = 2.0, ratio: str = "geometric"):
    return _truncate(_sequence_ratio(log_ratio, valid, ratio), valid, cap)


@OFF_POLICY_CORRECTIONS.register("seq_mis")
def _seq_mis(log_ratio: Tensor, valid: Tensor, low: float = 0.5, high: float = 2.0, ratio: str = "geometric", weighted: bool = False):
    seq = _sequence_ratio(log_ratio, valid, ratio)
    weight = seq if weighted else torch.ones_like(seq)
    return weight, _in_band(seq, valid, low, high), torch.zeros_like(valid)


def off_policy_correction(name: str, old_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, **params) -> Correction:
    """The weights of correction ``name`` (a key of :data:`OFF_POLICY_CORRECTIONS`) for tokens drawn by μ.

    ``old_logp`` ``[B, T]``: the trainer's log-probs of the sampled tokens at the sampling weights (π_old;
    π_prox for ``decoupled``); ``behaviour_logp`` ``[B, T]``: the behaviour policy's (μ: the rollout
    engine's log-probs, or the stale version's); both detached here. ``mask`` ``[B, T]``: valid tokens.
    Unknown names raise ``KeyError``, unknown parameters ``TypeError``, bad shapes or values ``ValueError``.
    """
    fn = OFF_POLICY_CORRECTIONS.get(name)
    check_params(fn, f"off-policy correction {name!r}", 2, params)
    if old_logp.dim() != 2 or old_logp.shape != mask.shape or behaviour_logp.shape != mask.shape:
        raise ValueError(f"old_logp, behaviour_logp and mask must be [B, T] alike, got {tuple(old_logp.shape)}, "
                         f"{tuple(behaviour_logp.shape)} and {tuple(mask.shape)}")
    valid = valid_mask(mask)
    log_ratio = masked(old_logp.detach() - behaviour_logp.detach(), valid)
    with torch.no_grad():
        weight, kept, truncated = fn(log_ratio, valid, **params)
        kept = kept & valid
        weight = masked(weight, kept)
        ratio = torch.exp(log_ratio)
        dropped = valid & ~kept
        metrics = {
            "is_ratio_mean": masked_mean(ratio, valid),
            "is_weight_mean": masked_mean(weight, valid),
            "mismatch_kl": masked_mean(ratio - 1.0 - log_ratio, valid),
            "is_truncated_frac": masked_mean(truncated.to(ratio.dtype), valid),
            "is_masked_frac": masked_mean(dropped.to(ratio.dtype), valid),
            "is_masked_tokens": dropped.sum().to(ratio.dtype),
        }
    return Correction(weight=weight.detach(), kept=kept, metrics=metrics)


def corrected_policy_loss(
    loss: str,
    correction: str,
    logp: Tensor,
    old_logp: Tensor,
    behaviour_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    aggregation: str = "token_mean",
    loss_params: dict | None = None,
    correction_params: dict | None = None,
    aggregation_params: dict | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """A policy loss of :data:`POLICY_LOSSES` on samples from μ, corrected::

        L = aggregate( w_t · L_t(π/π_old, A_t) ,  mask )       w = off_policy_correction(correction, π_old, μ)

    ``logp`` ``[B, T]`` with gradient (π); ``old_logp`` the clip anchor and the numerator of ρ (π_old, or
    π_prox for ``decoupled``); ``behaviour_logp`` μ; ``advantages`` ``[B]`` or ``[B, T]``. With ``loss``
    ``ppo_clip`` and ``correction`` ``decoupled`` this is the decoupled PPO objective
    ``-(π_prox/μ) min(r A, clip(r, 1-ε, 1+ε) A)``, ``r = π/π_prox``. Dropped tokens stay in the
    denominator; ``aggregation_params`` go to the aggregation (e.g. ``max_len``). Returns ``(loss, metrics)``:
    the policy loss's metrics and the correction's.
    """
    if logp.shape != mask.shape or old_logp.shape != mask.shape:
        raise ValueError(f"logp, old_logp and mask must be [B, T] alike, got {tuple(logp.shape)}, {tuple(old_logp.shape)} and {tuple(mask.shape)}")
    fix = off_policy_correction(correction, old_logp, behaviour_logp, mask, **(correction_params or {}))
    fn = POLICY_LOSSES.get(loss)
    check_params(fn, f"policy loss {loss!r}", 4, loss_params or {})
    valid = valid_mask(mask)
    adv = masked(_token_adv(advantages, logp), valid)
    per_token, metrics = fn(logp, old_logp.detach(), adv, valid, **(loss_params or {}))
    weighted = masked(fix.weight.to(per_token.dtype) * per_token, fix.kept)  # never 0 * inf at a dropped token
    return aggregate(weighted, valid, aggregation, **(aggregation_params or {})), {**metrics, **fix.metrics}
