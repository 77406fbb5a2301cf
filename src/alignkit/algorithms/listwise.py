"""Rankings: PRO (listwise Plackett–Luce) on the shared engine.

Rows are ``prompt`` + ``completions`` + ``scores`` (or ``ranks``); the completions are ordered best first
and every completion of a prompt is scored in the same batch. ``listwise.loss: pro`` (Song et al. 2023)
with ``listwise.sft_weight`` adding the NLL of the best completion. Every row of a data set must rank the
same number of completions. For Curry-DPO (pairs from rankings, easy to hard) use ``algorithm: dpo``
with ``data.kind: ranked`` and ``dpo.curriculum: true``.
"""

from __future__ import annotations

import torch

from ..data.collate import attach_meta, collate_sequences
from ..data.records import DataError
from ..engine.contract import Algorithm, Metrics
from ..objectives.listwise import listwise_loss


def ranked_order(example: dict) -> list[int]:
    """Indices of the example's completions, best score first (stable for ties)."""
    scores = example["scores"]
    return sorted(range(len(scores)), key=lambda j: -scores[j])


class Listwise(Algorithm):
    name = "pro"
    data_kind = "ranked"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.listwise
        self.name = self.cfg.loss

    def setup(self, ctx) -> None:
        for examples in (ctx.train_examples, ctx.eval_examples):
            if not examples:
                continue
            k = len(examples[0]["completion_ids"])
            for e in examples:
                if len(e["completion_ids"]) != k:
                    raise DataError("<ranked data>", e["row"], "completions", f"ranks {len(e['completion_ids'])} completions; every row must rank {k}")

    def collate(self, examples, pad_id):
        k = len(examples[0]["completion_ids"])
        ids, masks = [], []
        for e in examples:
            for j in ranked_order(e):
                ids.append(e["prompt_ids"] + e["completion_ids"][j])
                masks.append([0] * len(e["prompt_ids"]) + [1] * len(e["completion_ids"][j]))
        batch = collate_sequences(ids, masks, pad_id)
        batch["k"] = torch.tensor(k)
        return attach_meta(batch, examples)  # one value per ranking

    def weight(self, batch) -> float:
        return float(batch["input_ids"].shape[0] // int(batch["k"]))

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        k = int(batch["k"])
        sums = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum(-1).view(-1, k)
        tokens = batch["loss_mask"][:, 1:].sum(-1).float().view(-1, k)
        params = {"sft_weight": self.cfg.sft_weight} if self.cfg.sft_weight else {}
        losses = listwise_loss(self.cfg.loss, sums, tokens, beta=self.cfg.beta, **params)
        n = float(sums.shape[0])
        normalised = (sums / tokens.clamp(min=1)).detach()
        top_first = (normalised[:, 0] >= normalised.max(-1).values).float()
        return losses.sum(), {"logps/best": (sums[:, 0].detach().sum(), n), "rank/top_is_best": (top_first.sum(), n)}
