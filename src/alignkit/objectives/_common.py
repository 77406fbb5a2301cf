"""Helpers shared by the objective families: the loss registry, argument checks and masked reductions.

Nothing here knows about a particular loss; every family module imports from here and from no sibling
family except where it builds on one (``pairwise`` for the pair statistics, ``policy`` for aggregation).
"""

from __future__ import annotations

import math
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

from ..core.registry import Registry, check_params

T = TypeVar("T")


class Losses(Registry[T]):
    """A :class:`~alignkit.core.registry.Registry` that also reads like a mapping: ``losses[name]``
    (``KeyError`` with the registry's message), and :meth:`unregister` to drop an entry again."""

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def unregister(self, name: str) -> None:
        """Remove ``name`` if it is registered (e.g. a loss a test added)."""
        self._entries.pop(name, None)


def lookup(registry: Registry[T], name: str) -> T:
    """``registry.get(name)``, raising ``ValueError`` (not ``KeyError``) with the registry's message:
    the preference-loss entry points treat an unknown name as a bad argument value."""
    if name not in registry:
        raise ValueError(registry.unknown(name))
    return registry.get(name)


def checked(registry: Registry[Callable[..., Tensor]], name: str, n_positional: int, params: dict[str, Any]) -> Callable[..., Tensor]:
    """Look ``name`` up (``ValueError`` if unknown) and check its keyword ``params`` (``TypeError``)."""
    fn = lookup(registry, name)
    check_params(fn, f"{registry.kind} {name!r}", n_positional, params)
    return fn


def check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite positive number; got {beta!r}")


# --------------------------------------------------------------------------------------
# Masks and safe reductions (online RL families)
# --------------------------------------------------------------------------------------


def valid_mask(mask: Tensor) -> Tensor:
    """Boolean view of a mask (``mask > 0``)."""
    if mask.dtype == torch.bool:
        return mask
    return mask > 0


def masked(x: Tensor, valid: Tensor) -> Tensor:
    """``x`` where ``valid``, else 0 (never reads ``x`` at invalid positions, even NaN/inf)."""
    return torch.where(valid, x, torch.zeros_like(x))


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Detached mean of ``x`` over the valid positions (0 when none is valid)."""
    return (masked(x, valid).sum() / valid.sum().clamp(min=1)).detach()


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 wherever ``den == 0`` (zero-variance groups, eps=0)."""
    den = torch.broadcast_to(den, num.shape)
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def check_finite_rewards(rewards: Tensor) -> None:
    """``ValueError`` unless ``rewards`` is 1-D and finite; the message names the offending indices."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    bad = ~torch.isfinite(rewards)
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten().tolist()
        kinds = ["NaN" if torch.isnan(rewards[i]) else "inf" for i in idx]
        detail = ", ".join(f"index {i} ({k})" for i, k in zip(idx, kinds))
        raise ValueError(f"non-finite reward (NaN/inf) at {detail}")
