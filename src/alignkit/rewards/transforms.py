"""Transforming and combining rewards (pure tensor functions).

* :func:`log_sigmoid_centre`: ``u = log σ(r − r_ref)`` (Wang et al. 2024, "Transforming and Combining
  Rewards for Aligning Large Language Models"). ``r_ref`` is a reference reward for the prompt (e.g. the
  reward of the SFT model's sample or a per-prompt quantile); ``u ≤ 0``, it saturates once a response is
  clearly better than the reference and keeps a strong gradient while it is worse.
* :func:`sum_transformed`: ``Σ_i w_i log σ(r_i − r_ref,i)`` — "good on all": a sum of log-sigmoids is
  the log of the probability of being better than the reference on *every* objective (treating them as
  independent), so one objective cannot buy off another.
* :func:`ensemble_reduce`: conservative rewards from ensemble members ``[N, K]``: ``mean``,
  ``mean_minus_std`` (``mean − λ·std``), ``min``, ``uncertainty_weighted`` (``mean − λ·var``: Coste et
  al. 2024, "Reward Model Ensembles Help Mitigate Overoptimization"), ``uncertainty_shrink``
  (``mean / (1 + λ·var)``: shrinks uncertain rewards towards 0, whatever their sign), ``median`` (the
  middle member; the mean of the two middle ones for an even count).
* :func:`length_penalty`, :func:`clip`, :func:`whiten`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ENSEMBLE_REDUCTIONS = ("mean", "mean_minus_std", "min", "uncertainty_weighted", "uncertainty_shrink", "median")


def _t(x: Tensor | Sequence[float] | float) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float32)


def log_sigmoid_centre(rewards: Tensor, reference: Tensor | float) -> Tensor:
    """``log σ(r − r_ref)``."""
    return F.logsigmoid(_t(rewards) - _t(reference))


def sum_transformed(rewards: Sequence[Tensor], references: Sequence[Tensor | float], weights: Sequence[float] | None = None) -> Tensor:
    """``Σ_i w_i log σ(r_i − r_ref,i)`` over objectives ``i``."""
    if len(rewards) != len(references):
        raise ValueError(f"sum_transformed: {len(rewards)} rewards but {len(references)} references")
    weights = list(weights) if weights is not None else [1.0] * len(rewards)
    if len(weights) != len(rewards):
        raise ValueError(f"sum_transformed: {len(rewards)} rewards but {len(weights)} weights")
    return sum(w * log_sigmoid_centre(r, ref) for r, ref, w in zip(rewards, references, weights))


def ensemble_reduce(scores: Tensor, mode: str = "mean", lam: float = 1.0) -> Tensor:
    """``scores [N, K]`` (K members) -> ``[N]``. ``std`` and ``var`` are the population std and variance
    over members (divided by K)."""
    scores = _t(scores)
    if scores.ndim == 1:
        scores = scores[:, None]
    if mode == "mean":
        return scores.mean(-1)
    if mode == "mean_minus_std":
        return scores.mean(-1) - lam * scores.std(-1, unbiased=False)
    if mode == "min":
        return scores.min(-1).values
    if mode == "uncertainty_weighted":
        return scores.mean(-1) - lam * scores.var(-1, unbiased=False)
    if mode == "uncertainty_shrink":
        return scores.mean(-1) / (1.0 + lam * scores.var(-1, unbiased=False))
    if mode == "median":
        # torch.median returns the lower middle value; the median of an even count is the mean of both
        ordered = scores.sort(-1).values
        k = ordered.shape[-1]
        return ordered[..., k // 2] if k % 2 else (ordered[..., k // 2 - 1] + ordered[..., k // 2]) / 2
    raise KeyError(f"unknown ensemble reduction {mode!r}; allowed: {', '.join(ENSEMBLE_REDUCTIONS)}")


def length_penalty(rewards: Tensor, lengths: Tensor | Sequence[float], coef: float, target: float | None = None) -> Tensor:
    """``r − coef · len`` or, with ``target``, ``r − coef · max(0, len − target)``."""
    lengths = _t(lengths).to(_t(rewards).dtype)
    excess = lengths if target is None else (lengths - target).clamp(min=0)
    return _t(rewards) - coef * excess


def clip(rewards: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
    return _t(rewards).clamp(min=low, max=high)


def whiten(rewards: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(r − mean) / std`` over the batch (population std); ``shift_mean=False`` keeps the mean:
    ``(r − mean) / std + mean``."""
    r = _t(rewards).float()
    if r.numel() < 2:
        return r - r.mean() if shift_mean else r
    mean, std = r.mean(), r.std(unbiased=False)
    out = (r - mean) / (std + eps)
    return out if shift_mean else out + mean


TRANSFORMS = {
    "none": lambda r, **_: _t(r),
    "log_sigmoid": lambda r, reference=0.0, **_: log_sigmoid_centre(r, reference),
    "clip": lambda r, low=None, high=None, **_: clip(r, low, high),
    "whiten": lambda r, shift_mean=True, **_: whiten(r, shift_mean),
}


def apply_transform(name: str, rewards: Tensor, **params) -> Tensor:
    if name not in TRANSFORMS:
        raise KeyError(f"unknown reward transform {name!r}; allowed: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name](rewards, **params)
