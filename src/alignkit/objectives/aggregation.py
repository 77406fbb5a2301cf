"""Token -> scalar loss reductions shared by the policy and value losses.

Entry point: :func:`aggregate` (registry :data:`AGGREGATIONS`: ``token_mean``, ``seq_mean_token_mean``,
``seq_mean_token_sum``, ``seq_mean_token_sum_norm``).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..core.registry import Registry
from ._common import masked, valid_mask

__all__ = ["AGGREGATIONS", "aggregate"]

AGGREGATIONS: Registry[Callable[..., Tensor]] = Registry("aggregation")


@AGGREGATIONS.register("token_mean")
def _agg_token_mean(loss: Tensor, valid: Tensor) -> Tensor:
    return masked(loss, valid).sum() / valid.sum().clamp(min=1)


def _seq_mean(per_seq: Tensor, valid: Tensor) -> Tensor:
    nonempty = valid.any(dim=1)
    return masked(per_seq, nonempty).sum() / nonempty.sum().clamp(min=1)


@AGGREGATIONS.register("seq_mean_token_mean")
def _agg_seq_mean_token_mean(loss: Tensor, valid: Tensor) -> Tensor:
    per_seq = masked(loss, valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return _seq_mean(per_seq, valid)


@AGGREGATIONS.register("seq_mean_token_sum")
def _agg_seq_mean_token_sum(loss: Tensor, valid: Tensor) -> Tensor:
    return _seq_mean(masked(loss, valid).sum(dim=1), valid)


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def _agg_seq_mean_token_sum_norm(loss: Tensor, valid: Tensor, max_len: int | None = None) -> Tensor:
    max_len = loss.shape[1] if max_len is None else max_len
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    return _seq_mean(masked(loss, valid).sum(dim=1) / max_len, valid)


def aggregate(loss: Tensor, mask: Tensor, mode: str = "token_mean", **params) -> Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar.

    With ``n_b`` the number of valid tokens of row ``b`` and ``S`` the set of
    rows with ``n_b > 0``:

    * ``token_mean``:               ``sum_{b,t} m l / sum_b n_b``  (DAPO token-level)
    * ``seq_mean_token_mean``:      ``1/|S| sum_{b in S} (sum_t m l) / n_b`` (GRPO paper)
    * ``seq_mean_token_sum``:       ``1/|S| sum_{b in S} sum_t m l``
    * ``seq_mean_token_sum_norm``:  ``1/|S| sum_{b in S} (sum_t m l) / max_len``
      (Dr. GRPO: a constant ``max_len``, default ``T``, instead of ``n_b``)

    Rows with no valid token are left out of the sequence mean; if nothing is
    valid the result is an exact 0 that still belongs to the autograd graph -
    never NaN.  Values at masked positions are never read.
    """
    reduce = AGGREGATIONS.get(mode)  # KeyError naming the allowed modes
    if loss.shape != mask.shape or loss.dim() != 2:
        raise ValueError(f"loss and mask must be [B, T], got {tuple(loss.shape)} and {tuple(mask.shape)}")
    return reduce(loss, valid_mask(mask), **params)
