"""Self-play objectives on win rates (SPPO, Nash-MD, online IPO): per-sample or per-pair losses.

Conventions as in :mod:`.pairwise`: ``logratio`` is the summed completion log-prob of the policy minus
that of the reference ``π_t`` (the previous iterate), one value per sample ``[B]``; win rates are
estimates of ``P(y ≻ π_t | x)`` in ``[0, 1]``; every loss returns per-example losses ``[B]``.

* ``sppo`` (Wu et al. 2024, "Self-play preference optimization for language model alignment"): the
  multiplicative-weights update ``π_{t+1}(y|x) ∝ π_t(y|x) exp(η P(y ≻ π_t | x))`` approximated by the
  regression ``min_θ E_{y~π_t} [(log π_θ(y|x)/π_t(y|x) − η (P̂(y ≻ π_t | x) − 1/2))²]`` (the
  log-partition ``log Z_{π_t}(x)`` replaced by ``η/2``), with ``P̂(y ≻ π_t | x) = (1/K) Σ_k P(y ≻ y_k | x)``
  over K samples ``y_k ~ π_t``.
* ``online_ipo`` (Calandriello et al. 2024, "Human alignment of large language models through online
  preference optimisation"; the online-IPO loss as EGPO writes it): for a pair ``y, y'`` of samples of
  the policy, ``(log π_θ(y)/π_ref(y) − log π_θ(y')/π_ref(y') − (P(y ≻ π) − P(y' ≻ π)) / τ)²``. With the
  hard label ``P(y ≻ π) − P(y' ≻ π) = 1/2`` it is offline IPO's ``(h − 1/(2τ))²``.
* ``nash_md`` (Munos et al. 2023, "Nash learning from human feedback"): the policy gradient of the
  KL-regularised preference game against an opponent sampled from the geometric mixture
  ``π_θ^(1−m) π_ref^m``; per-sample reward ``P(y ≻ y') − 1/2 − β log π_θ(y)/π_ref(y)``.

Pair losses (registered with ``kind="pair"``) take ``(margin, preference)``: ``margin = h`` the pair's
log-ratio margin ``log π_θ(y)/π_ref(y) − log π_θ(y')/π_ref(y')`` and ``preference = P(y ≻ y')`` in ``[0, 1]``
(a soft label from the judge; 1 is a hard label):

* ``online_ipo`` (Calandriello et al. 2024; Azar et al. 2023's IPO with a soft preference): ``(h − (P − 1/2)/τ)²``.
  With two samples ``y, y'`` of ``π`` the group estimates of ``P(y ≻ π)`` and ``P(y' ≻ π)`` are ``(1/2 + P)/2`` and
  ``(1/2 + 1 − P)/2``, whose difference is ``P − 1/2``: the per-pair form of EGPO's ``(P(y ≻ π) − P(y' ≻ π))/τ``.
  INPO (Zhang et al. 2024) is this regression against the geometric reference ``π_t^{1−ητ} π_ref^{ητ}``
  with ``1/τ = η`` (the loop's ``iterate.reference: geometric``).
* ``soft_dpo`` (OSP, "Online self-preferring language models"; CREAM's consistency-weighted DPO):
  ``−[P log σ(βh) + (1 − P) log σ(−βh)]``; ``P = 1`` is DPO.

Entry point: :func:`selfplay_loss` (registry :data:`SELFPLAY_LOSSES`). Register another with
``@register_selfplay("name")`` over ``fn(logratio, win_rate, **params) -> Tensor[B]`` (per sample) or
``@register_selfplay("name", kind="pair")`` over ``fn(margin, preference, **params) -> Tensor[B]``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor

from ._common import Losses, checked

__all__ = ["SELFPLAY_LOSSES", "ipo_pair_loss", "nash_md_loss", "online_ipo_loss", "register_selfplay", "selfplay_loss", "soft_dpo_loss", "sppo_loss"]

SELFPLAY_LOSSES: Losses[Callable[..., Tensor]] = Losses("self-play loss")


def register_selfplay(name: str, kind: str = "sample"):
    """Register ``fn(logratio: Tensor[B], win_rate: Tensor[B], **params) -> Tensor[B]`` under ``name`` (``kind="sample"``,
    trained on win_rate rows) or ``fn(margin: Tensor[B], preference: Tensor[B], **params) -> Tensor[B]`` (``kind="pair"``,
    trained on pair rows that carry ``preference``)."""
    if kind not in ("sample", "pair"):
        raise ValueError(f"self-play loss kind must be sample or pair, not {kind!r}")
    return SELFPLAY_LOSSES.register(name, kind=kind)


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number; got {value!r}")


def _check_shapes(logratio: Tensor, win_rate: Tensor) -> None:
    if logratio.dim() != 1 or win_rate.shape != logratio.shape:
        raise ValueError(f"logratio and win_rate must both have shape [B]; got {tuple(logratio.shape)} and {tuple(win_rate.shape)}")


@register_selfplay("sppo")
def sppo_loss(logratio: Tensor, win_rate: Tensor, eta: float = 1.0) -> Tensor:
    """SPPO: ``(log π_θ(y|x)/π_t(y|x) − η (P̂(y ≻ π_t|x) − 1/2))²`` per sample ``[B]``.

    ``logratio``: ``log π_θ(y|x) − log π_t(y|x)`` (summed over the completion); ``win_rate``: ``P̂``."""
    _check_positive("eta", eta)
    _check_shapes(logratio, win_rate)
    target = eta * (win_rate.to(logratio.dtype) - 0.5)
    return (logratio - target) ** 2


@register_selfplay("nash_md")
def nash_md_loss(logratio: Tensor, win_rate: Tensor, beta: float = 0.1) -> Tensor:
    """Nash-MD's policy gradient (Munos et al. 2023, "Nash learning from human feedback", Nash-MD-PG) per sample ``[B]``.

    ``y`` is a sample of ``π_θ``, ``win_rate`` its ``P(y ≻ y')`` against a sample ``y'`` of the geometric mixture
    ``π_θ^(1−m) π_ref^m``; the regularised game's per-sample reward is ``A = P − 1/2 − β log π_θ(y)/π_ref(y)``.
    The value is the surrogate ``−A · logratio`` with ``A`` held constant, whose gradient is the policy-gradient
    estimate ``−A ∇ log π_θ(y)`` (``logratio = log π_θ − log π_ref`` has the gradient of ``log π_θ``)."""
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0; got {beta!r}")
    _check_shapes(logratio, win_rate)
    advantage = (win_rate.to(logratio.dtype) - 0.5) - beta * logratio.detach()
    return -advantage * logratio


def online_ipo_loss(logratio: Tensor, other_logratio: Tensor, win_rate: Tensor, other_win_rate: Tensor, tau: float = 0.1) -> Tensor:
    """Online IPO per pair ``[B]``: ``(h − (P(y ≻ π) − P(y' ≻ π)) / τ)²``, ``h = logratio − other_logratio``
    (each ``log π_θ − log π_ref`` of its sample)."""
    _check_positive("tau", tau)
    _check_shapes(logratio, win_rate)
    _check_shapes(other_logratio, other_win_rate)
    h = logratio - other_logratio
    target = (win_rate.to(h.dtype) - other_win_rate.to(h.dtype)) / tau
    return (h - target) ** 2


def _check_preference(margin: Tensor, preference: Tensor) -> Tensor:
    _check_shapes(margin, preference)
    p = preference.to(margin.dtype)
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError("preference must be a probability P(chosen > rejected) in [0, 1]")
    return p


@register_selfplay("online_ipo", kind="pair")
def ipo_pair_loss(margin: Tensor, preference: Tensor, tau: float = 0.1) -> Tensor:
    """Online IPO on a pair with a soft preference: ``(h − (P(y ≻ y') − 1/2) / τ)²`` per pair ``[B]``.

    ``margin``: ``h = log π_θ(y)/π_ref(y) − log π_θ(y')/π_ref(y')``; ``preference``: ``P(y ≻ y')``. A hard label
    (``P = 1``) gives offline IPO's ``(h − 1/(2τ))²``; a tie (``P = 1/2``) pulls ``h`` to 0."""
    _check_positive("tau", tau)
    p = _check_preference(margin, preference)
    return (margin - (p - 0.5) / tau) ** 2


@register_selfplay("soft_dpo", kind="pair")
def soft_dpo_loss(margin: Tensor, preference: Tensor, beta: float = 0.1) -> Tensor:
    """DPO with a soft label (OSP; CREAM): ``−[P log σ(βh) + (1 − P) log σ(−βh)]`` per pair ``[B]``."""
    _check_positive("beta", beta)
    p = _check_preference(margin, preference)
    return -(p * F.logsigmoid(beta * margin) + (1 - p) * F.logsigmoid(-beta * margin))


def selfplay_loss(name: str, logratio: Tensor, win_rate: Tensor, **params: Any) -> Tensor:
    """The registered self-play loss ``name`` on ``(logratio, win_rate)`` (per sample) or ``(margin, preference)``
    (pair losses); unknown names and parameters are named."""
    return checked(SELFPLAY_LOSSES, name, 2, params)(logratio, win_rate, **params)
