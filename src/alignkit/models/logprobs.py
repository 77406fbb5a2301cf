"""Per-token log-probabilities of the targets, without full-vocabulary fp32 logits.

Convention: for a sequence ``x_0 .. x_{T-1}`` with ``loss_mask``, the log-prob of token ``t`` (t >= 1) is
``log softmax(logits_{t-1} / temperature)[x_t]``; it is returned at position ``t`` and is zero wherever
``loss_mask[t] == 0``. The sequence log-prob is the sum over masked tokens (never a mean).

Packed rows (several sequences sharing a row, e.g. ``[prompt, chosen, rejected]``) break the "predicted by
position t-1" rule: the first rejected token is predicted by the last prompt token. For them the caller
passes ``source_index`` (for every target ``t``, the position whose hidden state predicts ``x_t``), a 4-D
``attention_mask`` (see :func:`packed_attention_mask`) and ``position_ids``; then ``loss_mask[t] == 1``
marks target ``t`` at any position.

:class:`TargetLogProbs` wraps a causal LM so that one forward returns these log-probs: it runs the
decoder, keeps only the hidden states that predict a masked target, and applies the output head to those
rows alone, in the model's compute precision, upcasting only the selected rows' logits to fp32 for the
log-softmax. Wrapping (rather than post-processing the logits) keeps DDP/FSDP hooks on the one forward.
"""

from __future__ import annotations

import torch
from torch import nn

# attention implementations that take a custom 4-D mask as ``attention_mask``
PACKABLE_ATTENTION = ("eager", "sdpa")


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):  # peft: LoRA layers live inside the base model's modules
        inner = inner.get_base_model()
    return inner


def attention_implementation(model: nn.Module) -> str | None:
    config = getattr(_unwrap(model), "config", None)
    return getattr(config, "_attn_implementation", None)


def supports_packing(model: nn.Module) -> bool:
    """Whether ``model`` accepts the custom 4-D masks of packed rows (eager or sdpa attention)."""
    return attention_implementation(model) in PACKABLE_ATTENTION


def packed_attention_mask(segment: torch.Tensor, group: torch.Tensor, kind: str = "bool", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[B, 1, T, T]`` mask of packed pair rows.

    Query ``q`` may attend key ``k`` when ``k <= q``, both belong to the same pair (``group``), and ``k``
    is a prompt token or in the same segment as ``q`` (so rejected tokens never see chosen ones). Padding
    attends only to itself (no empty rows). ``kind="bool"``: True where allowed (sdpa);
    ``kind="additive"``: 0 where allowed and ``finfo(dtype).min`` elsewhere (eager).
    """
    t = segment.shape[1]
    positions = torch.arange(t, device=segment.device)
    causal = positions[None, :] <= positions[:, None]  # [T(q), T(k)]
    same_group = group[:, :, None] == group[:, None, :]
    visible = (segment[:, None, :] == 0) | (segment[:, :, None] == segment[:, None, :])
    allowed = causal[None] & same_group & visible & (group[:, :, None] >= 0)
    allowed |= torch.eye(t, dtype=torch.bool, device=segment.device)[None]
    allowed = allowed[:, None]
    if kind == "bool":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segment.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def mask_for(model: nn.Module, segment: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """:func:`packed_attention_mask` in the form ``model``'s attention implementation takes."""
    if attention_implementation(model) == "eager":
        dtype = next(_unwrap(model).parameters()).dtype
        return packed_attention_mask(segment, group, "additive", dtype)
    return packed_attention_mask(segment, group, "bool")


def packed_target_logps(module: nn.Module, input_ids: torch.Tensor, segment: torch.Tensor, group: torch.Tensor, loss_mask: torch.Tensor,
                        position_ids: torch.Tensor, source_index: torch.Tensor) -> torch.Tensor:
    """Log-probs of every target of packed rows, in ``loss_mask.nonzero()`` order ([n_targets]).

    ``module`` is a :class:`TargetLogProbs` (possibly DDP-wrapped, or a reference); the 4-D mask is built
    for its model's attention implementation. Callers scatter the values to where they belong: DPO sums
    them per (pair, chosen/rejected), online RL puts them back in the per-sequence layout."""
    inner = getattr(module, "module", module)  # DDP
    mask = mask_for(inner.model, segment, group)
    token_logps = module(input_ids, mask, loss_mask, position_ids, source_index)
    return token_logps[loss_mask.bool()]


class TargetLogProbs(nn.Module):
    """``forward(input_ids, attention_mask, loss_mask) -> [B, T]`` target log-probs (0 off the mask)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        source_index: torch.Tensor | None = None,
        return_logits: bool = False,
    ):
        """Target log-probs [B, T]; with ``return_logits`` also the fp32 (tempered) logits of the target
        rows [N, V] and their (row, column) positions, for token-level objectives such as TDPO's KL."""
        core = _unwrap(self.model)
        decoder = core.get_decoder() if hasattr(core, "get_decoder") else None
        head = core.get_output_embeddings()
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if source_index is None:
            # target t is predicted by position t-1
            rows, cols = loss_mask[:, 1:].nonzero(as_tuple=True)
            cols = cols + 1
            sources = cols - 1
        else:
            rows, cols = loss_mask.nonzero(as_tuple=True)
            sources = source_index[rows, cols]
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        if decoder is not None and decoder is not core and head is not None:
            hidden = decoder(**kwargs).last_hidden_state
            logits = head(hidden[rows, sources])
        else:
            logits = self.model(**kwargs).logits[rows, sources]
        logits = logits.float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        targets = input_ids[rows, cols]
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        out = out.index_put((rows, cols), picked)
        return (out, logits, (rows, cols)) if return_logits else out
