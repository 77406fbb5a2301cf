"""Unpaired preference objectives: one completion per example with a binary label (KTO/BCO style).

Same conventions as :mod:`.pairwise` (summed completion log-probs, per-example losses ``[B]``).
Entry point: :func:`unpaired_loss` (registry :data:`UNPAIRED_LOSSES`); :class:`RunningMean` keeps
BCO's reward shift δ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import Losses, check_beta, checked

__all__ = ["UnpairedLogps", "UNPAIRED_LOSSES", "register_unpaired", "unpaired_loss", "RunningMean"]


@dataclass
class UnpairedLogps:
    """Sequence statistics of ``B`` unpaired, binary-labelled completions (KTO/BCO style).

    Attributes:
        logp: summed completion log-probs under the policy, ``[B]``.
        ref_logp: summed completion log-probs under the reference, ``[B]``.
        label: bool tensor ``[B]``; ``True`` marks a desirable completion.
        tokens: completion token counts ``[B]`` (may be ``None``; unused by the current losses).
        kl_logp: policy log-probs of *mismatched* prompt/completion pairs (KTO's KL estimate), or ``None``.
        kl_ref_logp: reference log-probs of the same mismatched pairs, or ``None``.
    """

    logp: Tensor
    ref_logp: Tensor
    label: Tensor
    tokens: Tensor | None = None
    kl_logp: Tensor | None = None
    kl_ref_logp: Tensor | None = None

    def __post_init__(self) -> None:
        if self.logp.dim() != 1 or self.logp.shape != self.ref_logp.shape:
            raise ValueError(
                f"logp and ref_logp must both have shape [B]; got {tuple(self.logp.shape)} "
                f"and {tuple(self.ref_logp.shape)}"
            )
        if self.label.shape != self.logp.shape:
            raise ValueError(f"label must have shape {tuple(self.logp.shape)}; got {tuple(self.label.shape)}")
        if self.label.dtype != torch.bool:
            raise ValueError(f"label must be a bool tensor; got dtype {self.label.dtype}")
        if (self.kl_logp is None) != (self.kl_ref_logp is None):
            raise ValueError("kl_logp and kl_ref_logp must be given together (or both be None)")


UNPAIRED_LOSSES: Losses[Callable[..., Tensor]] = Losses("unpaired loss")


def register_unpaired(name: str, *, reference: bool = True):
    """Register ``fn(logps: UnpairedLogps, beta: float, **params) -> Tensor[B]`` under ``name``."""
    return UNPAIRED_LOSSES.register(name, needs_reference=reference)


class RunningMean:
    """Running mean of detached rewards, used as BCO's reward shift δ.

    ``momentum=None`` (default) keeps the exact cumulative mean over every value seen; a float in (0, 1]
    keeps an exponential moving average ``m ← (1 − momentum)·m + momentum·mean(batch)``.
    """

    def __init__(self, momentum: float | None = None, initial: float = 0.0) -> None:
        if momentum is not None and not (0.0 < momentum <= 1.0):
            raise ValueError(f"momentum must lie in (0, 1]; got {momentum!r}")
        self.momentum = momentum
        self.mean = float(initial)
        self.count = 0

    def update(self, values: Tensor) -> float:
        """Fold a tensor of values (any shape) into the mean and return the new mean."""
        values = values.detach().double().reshape(-1)
        return self.update_mean(float(values.mean()) if values.numel() else 0.0, values.numel())

    def update_mean(self, batch_mean: float, n: int) -> float:
        """Fold a batch of ``n`` values whose mean is ``batch_mean`` into the mean and return the new mean."""
        if n == 0:
            return self.mean
        if self.momentum is None:
            self.mean += (batch_mean - self.mean) * n / (self.count + n)
        elif self.count == 0:
            self.mean = batch_mean
        else:
            self.mean = (1.0 - self.momentum) * self.mean + self.momentum * batch_mean
        self.count += n
        return self.mean

    @property
    def value(self) -> float:
        return self.mean

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "count": self.count, "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.count, self.momentum = float(state["mean"]), int(state["count"]), state["momentum"]

def unpaired_loss(name: str, logps: UnpairedLogps, beta: float = 0.1, **params: Any) -> Tensor:
    """Per-example loss ``[B]`` of the registered unpaired objective ``name`` (same errors as
    :func:`~alignkit.objectives.pairwise.pairwise_loss`)."""
    fn = checked(UNPAIRED_LOSSES, name, 2, params)
    check_beta(beta)
    return fn(logps, beta, **params)


@register_unpaired("kto")
def kto(lp: UnpairedLogps, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
        z0: float | Tensor | None = None) -> Tensor:
    """KTO (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization").

    ``r = Δ(y)``, ``z0 = max(0, mean(log πθ(y'|x) − log π_ref(y'|x)))`` over mismatched pairs, detached.
    Desirable: ``λ_D·(1 − σ(β·(r − z0)))``; undesirable: ``λ_U·(1 − σ(β·(z0 − r)))``. The mean is the one
    over this batch's KL tensors, unless ``z0`` is given (the trainer passes the mean over every micro-batch
    and process of the step, so splitting a batch does not change it); no KL tensors and no ``z0``: 0.
    """
    r = lp.logp - lp.ref_logp
    if z0 is not None:
        z0 = torch.as_tensor(z0, dtype=r.dtype, device=r.device).clamp(min=0).detach()
    elif lp.kl_logp is None:
        z0 = torch.zeros((), dtype=r.dtype, device=r.device)
    else:
        z0 = (lp.kl_logp - lp.kl_ref_logp).mean().clamp(min=0).detach()  # type: ignore[operator]
    good = desirable_weight * (1.0 - torch.sigmoid(beta * (r - z0)))
    bad = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(lp.label, good, bad)


@register_unpaired("bco")
def bco(lp: UnpairedLogps, beta: float, delta: float | Tensor = 0.0) -> Tensor:
    """BCO (Jung et al., 2024, "Binary Classifier Optimization for Large Language Model Alignment").

    ``r = β·Δ(y)``; desirable: ``−log σ(r − δ)``; undesirable: ``−log σ(−(r − δ))``, with δ the running mean of
    past rewards (keep it with :class:`RunningMean`, updated with detached ``r`` of both labels).
    The paper's optional density-ratio (UDM) weighting is not included.
    """
    z = beta * (lp.logp - lp.ref_logp) - delta
    return torch.where(lp.label, -F.logsigmoid(z), -F.logsigmoid(-z))


@register_unpaired("apo_zero_unpaired")
def apo_zero_unpaired(lp: UnpairedLogps, beta: float) -> Tensor:
    """APO-zero for unpaired data (D'Oosterlinck et al., 2024, "Anchored Preference Optimization ...").

    Desirable: ``1 − σ(β·Δ(y))``; undesirable: ``σ(β·Δ(y))``.
    """
    z = beta * (lp.logp - lp.ref_logp)
    return torch.where(lp.label, 1.0 - torch.sigmoid(z), torch.sigmoid(z))
