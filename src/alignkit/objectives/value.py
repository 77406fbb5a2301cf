"""The PPO critic's loss (clipped value loss)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import masked_mean, valid_mask
from .aggregation import aggregate

__all__ = ["value_loss"]


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    aggregation: str = "token_mean",
    **agg_params,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped PPO value loss (Schulman et al. 2017; as in OpenAI baselines ppo2)::

        V_clip = clamp(V, old_V - clip, old_V + clip)
        L_t    = 0.5 * max((V - R)^2, (V_clip - R)^2)

    (``V`` itself is clamped, not ``old_V + clamp(V - old_V)``: inside the range ``V_clip`` is exactly
    ``V``, so rounding never makes a token look clipped.) ``clip=None`` gives the plain
    ``0.5 (V - R)^2``.  Returns ``(loss, metrics)`` with ``vf_clip_frac`` (share of valid tokens where
    the clipped error is the larger one) and ``value_mean``.
    """
    valid = valid_mask(mask)
    ret = torch.where(valid, returns.detach(), torch.zeros_like(values))
    err = (values - ret) ** 2
    if clip is None:
        per_token = 0.5 * err
        active = torch.zeros_like(err, dtype=torch.bool)
    else:
        old = torch.where(valid, old_values.detach(), torch.zeros_like(values))
        v_clip = torch.clamp(values, old - clip, old + clip)
        err_clip = (v_clip - ret) ** 2
        per_token = 0.5 * torch.max(err, err_clip)
        active = (err_clip > err).detach()
    loss = aggregate(per_token, valid, aggregation, **agg_params)
    metrics = {
        "vf_clip_frac": masked_mean(active.to(values.dtype), valid),
        "value_mean": masked_mean(values.detach(), valid),
    }
    return loss, metrics
