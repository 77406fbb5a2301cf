"""Knowing when a model's weights changed, so that copies of them (a vLLM engine's) can be refreshed.

Two signals together: the parameters' autograd version counters, which every in-place edit bumps
(``load_state_dict``, ``p.mul_()``, torch's for-loop and foreach optimizers), and an update count that the
trainer raises after each optimizer step, because torch's fused optimizer kernels write the parameters
without bumping their version counters.
"""

from __future__ import annotations

from torch import nn


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)


def mark_updated(model: nn.Module) -> None:
    """Record that ``model``'s weights were just changed by an optimizer step."""
    inner = unwrap_ddp(model)
    inner._alignkit_updates = getattr(inner, "_alignkit_updates", 0) + 1


def weights_version(model: nn.Module) -> tuple[int, int, int]:
    """A value that changes whenever ``model``'s weights change (see the module docstring)."""
    inner = unwrap_ddp(model)
    params = list(inner.parameters())
    return sum(p._version for p in params), len(params), getattr(inner, "_alignkit_updates", 0)
