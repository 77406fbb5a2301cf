"""Supervised fine-tuning: the token-mean negative log-likelihood of completion (assistant) tokens.

The mean is over every completion token of the optimizer step (all micro-batches and processes), so a
long completion weighs more than a short one, exactly as in one big batch.
"""

from __future__ import annotations

import torch

from ..data.collate import collate_sft
from ..engine.contract import Algorithm, Metrics


class SFT(Algorithm):
    name = "sft"
    data_kind = "sft"

    def collate(self, examples, pad_id):
        return collate_sft(examples, pad_id)

    def weight(self, batch) -> float:
        return float(batch["loss_mask"][:, 1:].sum())

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        token_logps = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        nll = -token_logps.sum()
        tokens = self.weight(batch)
        return nll, {"nll": (nll.detach(), tokens), "tokens_per_example": (tokens, batch["input_ids"].shape[0])}
