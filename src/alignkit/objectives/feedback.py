"""Losses of learning from language feedback and of conditioned training (pure tensor maths).

Inputs are per-token log-probs ``logp [B, T]`` of the target tokens (0 elsewhere) and masks of the same
shape. Every function returns per-sequence losses ``[B]`` (sums over tokens); the caller sums them and
says what the sum is made of.

* :func:`weighted_nll` (C-RLFT, Wang et al. 2023, "OpenChat"): ``L_b = −r_{c(b)} Σ_t log π(y_t | x, c, y_<t)``,
  the class-conditioned policy's NLL weighted by its class's reward ``r_c``.
* :func:`unlikelihood` : ``−log(1 − π(y_t|·))``, computed from ``log π`` without cancellation.
* :func:`cut_loss` (CUT, Xu et al. 2023, "Reasons to Reject? Aligning Language Models with Judgments"):
  for a completion with a negative judgment, unlikelihood on the flagged (inappropriate) tokens ``U`` and
  likelihood on the others: ``L_b = −Σ_{t∈U} w log(1 − π(y_t|x, y_<t)) − Σ_{t∉U} log π(y_t|x, y_<t)``.
* :func:`ratio_flags` (CUT's detection rule): token ``t`` is flagged when the judgment makes it *more*
  likely, ``π(y_t | x, j, y_<t) > λ π(y_t | x, y_<t)``, i.e. ``log π_j − log π > log λ``: the judgment
  explains it.
* :func:`span_cross_entropy` (Text2Grad, Wang et al. 2025): a span reward model's per-token 3-class loss
  ``−Σ_t log softmax(z_t)[ℓ_t + 1]`` with ``ℓ_t ∈ {−1, 0, +1}`` (bad, neutral, good);
  :func:`expected_label` its token reward ``p_good − p_bad``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cut_loss", "expected_label", "ratio_flags", "span_cross_entropy", "unlikelihood", "weighted_nll"]


def weighted_nll(logp: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
    """``−w_b Σ_t mask·logp`` per sequence (C-RLFT's class-weighted SFT)."""
    return -weights.to(logp.dtype) * (logp * mask.to(logp.dtype)).sum(-1)


def unlikelihood(logp: Tensor, eps: float = 1e-6) -> Tensor:
    """``−log(1 − exp(logp))`` elementwise; ``logp`` is capped at ``log(1 − eps)`` so a token of probability 1
    costs ``−log eps`` instead of infinity. Uses ``log(−expm1(x))`` near 0 and ``log1p(−exp(x))`` below −ln 2."""
    x = logp.clamp(max=math.log1p(-eps))
    near = torch.log(-torch.expm1(x))
    far = torch.log1p(-torch.exp(x))
    return -torch.where(x > -math.log(2.0), near, far)


def cut_loss(logp: Tensor, mask: Tensor, flagged: Tensor, unlikelihood_weight: float = 1.0) -> Tensor:
    """CUT's per-sequence loss: ``w·unlikelihood`` on target tokens with ``flagged``, NLL on the other targets."""
    mask = mask.to(torch.bool)
    flagged = flagged.to(torch.bool) & mask
    kept = mask & ~flagged
    ul = torch.where(flagged, unlikelihood(logp), torch.zeros_like(logp))
    nll = torch.where(kept, -logp, torch.zeros_like(logp))
    return unlikelihood_weight * ul.sum(-1) + nll.sum(-1)


def ratio_flags(logp_judged: Tensor, logp_plain: Tensor, ratio_lambda: float) -> Tensor:
    """``π_j(y_t) > λ π(y_t)`` elementwise, from the two log-probs (no gradient: a detection, not a loss)."""
    if not ratio_lambda > 0:
        raise ValueError(f"ratio_lambda must be positive, got {ratio_lambda}")
    return (logp_judged.detach() - logp_plain.detach()) > math.log(ratio_lambda)


def span_cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence sums of ``−log softmax(logits)[label + 1]`` over ``mask``: ``logits [B, T, 3]`` (bad,
    neutral, good), ``labels [B, T]`` in {−1, 0, +1} (read only where ``mask``)."""
    if logits.shape[-1] != 3:
        raise ValueError(f"span logits need 3 classes (bad, neutral, good), got {logits.shape[-1]}")
    logp = torch.log_softmax(logits.float(), -1)
    valid = mask.to(torch.bool)
    index = torch.where(valid, labels.long() + 1, torch.ones_like(labels, dtype=torch.long))
    if ((index < 0) | (index > 2)).any():
        raise ValueError("span labels must be -1, 0 or +1")
    picked = logp.gather(-1, index[..., None])[..., 0]
    return -torch.where(valid, picked, torch.zeros_like(picked)).sum(-1)


def expected_label(logits: Tensor) -> Tensor:
    """``p_good − p_bad`` per position from ``[..., 3]`` logits: the span reward model's token reward, in [−1, 1]."""
    p = torch.softmax(logits.float(), -1)
    return p[..., 2] - p[..., 0]
