"""KL estimators for online RL: per-token estimates of ``KL(pi || pi_ref)`` and the KL penalty folded
into the rewards.

Entry points: :func:`kl_penalty` (registry :data:`KL_ESTIMATORS`: ``k1``, ``k2``, ``k3``, ``abs``) and
:func:`kl_in_reward`.  ``mask`` ``[B, T]``: a token is valid when ``mask > 0``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..core.registry import Registry
from ._common import valid_mask

__all__ = ["KL_ESTIMATORS", "kl_in_reward", "kl_penalty"]

KL_ESTIMATORS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def _kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def _kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def _kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


@KL_ESTIMATORS.register("abs")
def _kl_abs(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return (logp - ref_logp).abs()


def kl_penalty(kind: str, logp: Tensor, ref_logp: Tensor, clamp: float | None = None) -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from tokens sampled from ``pi``.

    Estimators from J. Schulman, "Approximating KL Divergence" (2020 note); with
    ``log r = ref_logp - logp``:

    * ``k1  = logp - ref_logp = -log r``          (unbiased, high variance, can be < 0)
    * ``k2  = 0.5 * (logp - ref_logp)^2``         (biased, low variance, >= 0)
    * ``k3  = exp(ref_logp - logp) - (ref_logp - logp) - 1 = r - 1 - log r``
      (unbiased, >= 0; the GRPO / DeepSeekMath estimator)
    * ``abs = |logp - ref_logp|``                 (biased, >= 0)

    ``clamp=c`` clamps the estimate to ``[-c, c]`` (symmetric; for non-negative
    estimators only the upper bound matters).  Gradients flow through both
    arguments; detach ``ref_logp`` (usually already constant) as needed.
    """
    kl = KL_ESTIMATORS.get(kind)(logp, ref_logp)  # KeyError naming the allowed estimators
    if clamp is not None:
        if clamp <= 0:
            raise ValueError(f"clamp must be positive, got {clamp}")
        kl = kl.clamp(min=-clamp, max=clamp)
    return kl


def kl_in_reward(
    token_rewards_or_scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    kind: str = "k1",
    clamp: float | None = None,
) -> Tensor:
    """Per-token rewards with the KL penalty folded in (InstructGPT-style RLHF,
    Ouyang et al. 2022; Ziegler et al. 2019)::

        r_t = -beta * kl_t                       for every valid token t
        r_T = -beta * kl_T + score               on the last valid token T

    ``token_rewards_or_scores`` is either sequence scores ``[B]`` (added on the
    last valid token of each row) or token rewards ``[B, T]`` (added where
    valid).  Masked positions get 0.  A row with no valid token gets all zeros
    (its score is dropped; nothing can carry it).  Computed without gradient.
    """
    valid = valid_mask(mask)
    with torch.no_grad():
        kl = kl_penalty(kind, logp.detach(), ref_logp.detach(), clamp=clamp)
        out = torch.where(valid, -beta * kl, torch.zeros_like(kl))
        s = torch.as_tensor(token_rewards_or_scores, dtype=out.dtype, device=out.device)
        if s.dim() == 1:
            if s.shape[0] != out.shape[0]:
                raise ValueError(f"scores must be [B]={out.shape[0]}, got {tuple(s.shape)}")
            T = out.shape[1]
            pos = torch.arange(T, device=out.device).expand_as(out)
            last = torch.where(valid, pos, torch.full_like(pos, -1)).max(dim=1).values
            has = last >= 0
            rows = torch.nonzero(has).flatten()
            out[rows, last[rows]] += s[rows]
        elif s.shape == out.shape:
            out = out + torch.where(valid, s, torch.zeros_like(s))
        else:
            raise ValueError(
                f"token_rewards_or_scores must be [B] or [B, T]; got {tuple(s.shape)} for logp "
                f"{tuple(out.shape)}"
            )
    return out
