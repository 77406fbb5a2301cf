"""Pure-tensor reward-model losses.

Every function takes scalar rewards (or logits) that a model has already produced and returns the
**per-example** loss (no reduction), so the caller decides how to average. Notation: ``r_c``/``r_r`` are
the rewards of the chosen and rejected completions of a pair, ``σ`` the logistic sigmoid.

==========================  ======================================================================
name                        per-example loss
==========================  ======================================================================
``bradley_terry``           ``−log σ(r_c − r_r − m)`` (``m`` the pair's margin, 0 when absent;
                            Llama-2's margin term); ``label_smoothing`` ε mixes in ``−log σ(r_r − r_c)``
``hinge``                   ``max(0, m + 1 − (r_c − r_r))`` (``m`` as above)
``centering``               ``coef · (r_c + r_r)²`` (reward centring, Eisenstein et al. 2023)
``regression``              ``(r − y)²`` (ratings)
``plackett_luce``           ``−Σ_i log( exp r_(i) / Σ_{j ≥ i} exp r_(j) )`` over one ranked list
``preference``              ``−log σ(ℓ)`` with ℓ the preference model's logit of P(chosen ≻ rejected)
``process``                 binary cross-entropy of step logits against per-step labels (masked mean
                            over the steps of each example)
``attribute_regression``    ``Σ_k m_k (r_k − y_k)² / Σ_k m_k``: the masked mean squared error of K
                            attribute heads against absolute ratings (multi-objective reward models)
``gated_bradley_terry``     ``−log σ(β Σ_k g_k (r_c,k − r_r,k))``: Bradley–Terry on the gated sum
                            ``r = β Σ_k g_k r_k`` (ArmoRM), with the prompt's gate ``g`` (a softmax)
==========================  ======================================================================

:func:`reward_loss` looks a name up in :data:`REWARD_LOSSES`; :func:`register_reward_loss` adds one.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import Losses

__all__ = [
    "REWARD_LOSSES",
    "register_reward_loss",
    "reward_loss",
    "bradley_terry",
    "hinge",
    "centering",
    "regression",
    "plackett_luce",
    "preference",
    "process",
    "attribute_regression",
    "gated_bradley_terry",
    "gated_reward",
    "pair_accuracy",
]

REWARD_LOSSES: Losses[Callable[..., Tensor]] = Losses("reward loss")


def register_reward_loss(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``fn(*tensors, **params) -> Tensor`` under ``name`` (``ValueError`` if taken)."""
    return REWARD_LOSSES.register(name)


def reward_loss(name: str, *args: Any, **params: Any) -> Tensor:
    """Per-example loss of the registered reward loss ``name`` (``KeyError`` naming the allowed ones)."""
    fn = REWARD_LOSSES.get(name)
    allowed = set(inspect.signature(fn).parameters)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise TypeError(f"reward loss {name!r} takes no parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return fn(*args, **params)


def _same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)})")


@register_reward_loss("bradley_terry")
def bradley_terry(chosen: Tensor, rejected: Tensor, margin: Tensor | float | None = None, label_smoothing: float = 0.0) -> Tensor:
    """``−(1−ε) log σ(r_c − r_r − m) − ε log σ(r_r − r_c + m)``."""
    _same_shape(chosen, rejected, "bradley_terry")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"bradley_terry: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    logits = chosen - rejected
    if margin is not None:
        logits = logits - margin
    loss = -F.logsigmoid(logits)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


@register_reward_loss("hinge")
def hinge(chosen: Tensor, rejected: Tensor, margin: Tensor | float | None = None) -> Tensor:
    """``max(0, 1 + m − (r_c − r_r))``."""
    _same_shape(chosen, rejected, "hinge")
    m = 1.0 if margin is None else 1.0 + margin
    return torch.relu(m - (chosen - rejected))


@register_reward_loss("centering")
def centering(chosen: Tensor, rejected: Tensor, coef: float = 0.01) -> Tensor:
    """``coef · (r_c + r_r)²``: keeps rewards centred on zero (BT is blind to a shift)."""
    _same_shape(chosen, rejected, "centering")
    return coef * (chosen + rejected) ** 2


@register_reward_loss("regression")
def regression(predicted: Tensor, target: Tensor) -> Tensor:
    """``(r − y)²`` against ratings ``y``."""
    _same_shape(predicted, target, "regression")
    return (predicted - target.to(predicted.dtype)) ** 2


@register_reward_loss("plackett_luce")
def plackett_luce(rewards: Tensor, scores: Tensor) -> Tensor:
    """Negative log-likelihood of the ranking given by ``scores`` (higher is better) under the
    Plackett–Luce model with utilities ``rewards``; one list (1-D tensors), a 0-d loss."""
    _same_shape(rewards, scores, "plackett_luce")
    order = torch.argsort(scores, descending=True, stable=True)
    r = rewards[order]
    # log Σ_{j ≥ i} exp r_j, by a reversed cumulative logsumexp
    tail = torch.logcumsumexp(r.flip(0), dim=0).flip(0)
    return (tail - r)[:-1].sum()


@register_reward_loss("preference")
def preference(logits: Tensor, labels: Tensor | None = None) -> Tensor:
    """Binary cross-entropy of the preference logit ``ℓ = logit P(a ≻ b)``; ``labels`` (1 when a is
    preferred, soft labels allowed) default to 1 (a is the chosen response)."""
    if labels is None:
        return -F.logsigmoid(logits)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")


@register_reward_loss("process")
def process(step_logits: Tensor, step_labels: Tensor, mask: Tensor) -> Tensor:
    """``[B, S]`` step logits and labels (1 good step, 0 bad) with a validity mask; the mean BCE over
    each example's valid steps, ``[B]`` (0 for an example with no valid step)."""
    _same_shape(step_logits, step_labels, "process")
    m = mask.to(step_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(step_logits, step_labels.to(step_logits.dtype), reduction="none")
    bce = torch.where(mask.bool(), bce, torch.zeros_like(bce))
    return bce.sum(-1) / m.sum(-1).clamp(min=1.0)


@register_reward_loss("attribute_regression")
def attribute_regression(predicted: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[B, K]`` attribute predictions and ratings with a mask of the ratings present; the mean squared
    error over each example's rated attributes, ``[B]`` (0 for an example with no rating)."""
    _same_shape(predicted, target, "attribute_regression")
    sq = (predicted - target.to(predicted.dtype)) ** 2
    if mask is None:
        return sq.mean(-1)
    _same_shape(predicted, mask, "attribute_regression mask")
    sq = torch.where(mask.bool(), sq, torch.zeros_like(sq))
    return sq.sum(-1) / mask.to(predicted.dtype).sum(-1).clamp(min=1.0)


def gated_reward(gate: Tensor, scores: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """``β Σ_k g_k r_k``: the multi-objective reward from ``[B, K]`` gate weights and attribute scores."""
    _same_shape(gate, scores, "gated_reward")
    return scale * (gate * scores).sum(-1)


@register_reward_loss("gated_bradley_terry")
def gated_bradley_terry(gate: Tensor, chosen: Tensor, rejected: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """``−log σ(β Σ_k g_k (r_c,k − r_r,k))``; ``gate`` ``[B, K]`` is the prompt's (shared by both
    completions), ``chosen``/``rejected`` ``[B, K]`` their attribute scores."""
    _same_shape(chosen, rejected, "gated_bradley_terry")
    return -F.logsigmoid(gated_reward(gate, chosen, scale) - gated_reward(gate, rejected, scale))


def pair_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """1 where the chosen reward is higher, 0.5 on ties, 0 otherwise (per pair)."""
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
