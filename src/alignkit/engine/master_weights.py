"""bf16 parameters for compute, fp32 master weights for the update (``train.precision=bf16_params``).

Under ``train.precision=bf16`` the parameters stay fp32 and autocast casts every weight to bf16 at every
matmul, forward and backward: on CPU those casts (``_to_copy``) were about 40% of an update of
SmolLM2-135M (benchmarks/README.md). Here the model's parameters *are* bf16, so forward and backward run
in bf16 with no casts, while the optimizer holds an fp32 copy of each trainable parameter, as
mixed-precision training does on accelerators (Micikevicius et al. 2018, "Mixed Precision Training"):

1. after each micro-batch's backward, its bf16 gradient is added to the master's fp32 gradient
   (:meth:`MasterWeights.collect`), so accumulation over micro-batches happens in fp32;
2. with several processes the fp32 master gradients are summed across processes (:meth:`reduce`)
   instead of DDP's bucketed reduce of the bf16 gradients (the trainer runs every micro-batch under
   ``no_sync``);
3. clipping, the non-finite check and AdamW act on the fp32 masters; then :meth:`publish` rounds each
   master into its bf16 parameter (round to nearest even).

An update smaller than half a bf16 step is therefore kept in the master and reaches the bf16 weight once
the master has moved far enough, unlike a model stored in bf16 (``model.dtype=bfloat16``) whose updates
round away (:mod:`alignkit.models.sanity`). Checkpoints and saved models hold the fp32 masters
(:meth:`full_precision`), so resuming continues exactly. Frozen parameters (a LoRA base, a value head's
frozen parts) are cast to bf16 and have no master; a merged LoRA model is saved from that bf16 base.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..models.precision import cast_parameters


class MasterWeights:
    """fp32 masters of a module's trainable bf16 parameters (see the module docstring)."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        self.dtype = dtype
        self.pairs: list[tuple[nn.Parameter, nn.Parameter]] = []  # (model parameter, fp32 master)
        self._seen: set[int] = set()

    def adopt(self, module: nn.Module) -> nn.Module:
        """Give every trainable parameter of ``module`` not adopted before an fp32 master (a copy of its
        current value), then cast all of ``module``'s floating-point parameters to the compute dtype."""
        for p in module.parameters():
            if p.requires_grad and p.is_floating_point() and id(p) not in self._seen:
                self._seen.add(id(p))
                master = nn.Parameter(p.detach().to(torch.float32, copy=True))
                self.pairs.append((p, master))
        return cast_parameters(module, self.dtype)

    @property
    def masters(self) -> list[nn.Parameter]:
        return [m for _, m in self.pairs]

    def collect(self) -> None:
        """Move the parameters' gradients (one micro-batch's) into the masters' fp32 gradients."""
        for p, m in self.pairs:
            if p.grad is None:
                continue
            if m.grad is None:
                m.grad = p.grad.to(torch.float32)
            else:
                m.grad.add_(p.grad)
            p.grad = None

    def reduce(self, strategy) -> None:
        """Average the masters' gradients over processes (one flattened fp32 all-reduce; a collective).
        A master without a gradient on this process counts as zero, as DDP treats an unused parameter."""
        if strategy.world <= 1:
            return
        grads = [m.grad if m.grad is not None else torch.zeros_like(m) for m in self.masters]
        flat = strategy.sum(torch.cat([g.reshape(-1) for g in grads])) / strategy.world
        offset = 0
        for m in self.masters:
            n = m.numel()
            m.grad = flat[offset:offset + n].view_as(m).clone()
            offset += n

    @torch.no_grad()
    def publish(self) -> None:
        """Round the updated masters into the model's parameters."""
        for p, m in self.pairs:
            p.copy_(m)

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[None]:
        """Inside: the trainable parameters hold their fp32 masters (for saving); after: bf16 again."""
        kept = [p.data for p, _ in self.pairs]
        for p, m in self.pairs:
            p.data = m.data
        try:
            yield
        finally:
            for (p, _), data in zip(self.pairs, kept):
                p.data = data
