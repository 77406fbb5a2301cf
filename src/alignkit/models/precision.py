"""Casting a model's parameters (not its buffers) to another dtype.

Buffers such as RoPE's ``inv_freq`` stay fp32, as a checkpoint loaded with ``dtype=bfloat16`` keeps them:
the rotary angles are computed from them in fp32 either way. Used by the bf16 sampler copy
(``rl.sampling.precision=bf16``) and by ``train.precision=bf16_params`` (:mod:`alignkit.engine.master_weights`).
"""

from __future__ import annotations

import torch
from torch import nn


def cast_parameters(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``module``'s floating-point parameters to ``dtype`` in place (the Parameter objects stay, so tied
    weights stay tied and references to them stay valid); returns ``module``."""
    for p in module.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return module
