"""Per-token log-probabilities of the targets, without full-vocabulary fp32 logits.

Convention: for a sequence ``x_0 .. x_{T-1}`` with ``loss_mask``, the log-prob of token ``t`` (t >= 1) is
``log softmax(logits_{t-1} / temperature)[x_t]``; it is returned at position ``t`` and is zero wherever
``loss_mask[t] == 0``. The sequence log-prob is the sum over masked tokens (never a mean).

:class:`TargetLogProbs` wraps a causal LM so that one forward returns these log-probs: it runs the
decoder, keeps only the hidden states that predict a masked target, and applies the output head to those
rows alone, in the model's compute precision, upcasting only the selected rows' logits to fp32 for the
log-softmax. Wrapping (rather than post-processing the logits) keeps DDP/FSDP hooks on the one forward.
"""

from __future__ import annotations

import torch
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):  # peft: LoRA layers live inside the base model's modules
        inner = inner.get_base_model()
    return inner


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
    ) -> torch.Tensor:
        core = _unwrap(self.model)
        decoder = core.get_decoder() if hasattr(core, "get_decoder") else None
        head = core.get_output_embeddings()
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        target_mask = loss_mask[:, 1:].bool()
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        if decoder is not None and decoder is not core and head is not None:
            hidden = decoder(**kwargs).last_hidden_state[:, :-1]
            selected = hidden[target_mask]
            logits = head(selected)
        else:
            logits = self.model(**kwargs).logits[:, :-1][target_mask]
        logits = logits.float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        targets = input_ids[:, 1:][target_mask]
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        out[:, 1:][target_mask] = picked
        return out


def sequence_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed target log-probs [B], target token counts [B]) of a collated batch."""
    module = model if isinstance(model, TargetLogProbs) else TargetLogProbs(model, temperature)
    token_logps = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    counts = batch["loss_mask"][:, 1:].sum(-1)
    return token_logps.sum(-1), counts
