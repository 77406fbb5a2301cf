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


def _same_count(counts: list[tuple[int, int]], source: str) -> None:
    """``counts``: (row, completions) per row; a :class:`DataError` names the first row whose count
    differs from the first row's."""
    if not counts:
        return
    first_row, k = counts[0]
    for row, n in counts:
        if n != k:
            raise DataError(source, row, "completions", f"ranks {n} completions; every row must rank {k} (as row {first_row} does)")


class Listwise(Algorithm):
    name = "pro"
    data_kind = "ranked"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.listwise
        self.name = self.cfg.loss

    def check_records(self, records: list[dict], source: str) -> None:
        """Every row of a data file ranks the same number of completions (checked on the whole file before
        any model work); the first row that differs is named."""
        _same_count([(r["_row"], len(r["completions"])) for r in records], source)

    def setup(self, ctx) -> None:
        data = self.recipe.data
        for examples, source, split in ((ctx.train_examples, data.train, "train"), (ctx.eval_examples, data.eval, "eval")):
            if examples:
                _same_count([(e["row"], len(e["completion_ids"])) for e in examples], source or f"<task {self.recipe.task.name}:{split}>")

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
