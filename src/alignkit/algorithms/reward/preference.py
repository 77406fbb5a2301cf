"""``reward.type: preference``: a PairRM-style pairwise model. One input holds both responses,
``prompt ␣A: a ␣B: b``, and the logit is made antisymmetric, ``ℓ = (f(c, r) − f(r, c)) / 2``; loss
``−log σ(ℓ)``. Its ``config.json`` carries ``reward_type: preference``."""

from __future__ import annotations

import torch

from ...data.collate import attach_meta, pad
from ...engine.contract import Metrics
from ...objectives.reward import reward_loss
from .base import REWARD_TYPES, RewardModelling


@REWARD_TYPES.register("preference")
class PreferenceRewardModelling(RewardModelling):
    reward_type = "preference"

    def __init__(self, recipe):
        super().__init__(recipe)
        if recipe.data.kind not in ("auto", "pair") or self.cfg.ensemble > 1:
            raise ValueError("reward.type=preference trains on pairs (data.kind pair/auto) and without reward.ensemble")
        self.markers: tuple[list[int], list[int]] | None = None

    def setup(self, ctx) -> None:
        from ...rewards.models import PAIR_MARKERS

        tok = ctx.tokenizer
        self.markers = tuple(tok(m, add_special_tokens=False)["input_ids"] for m in PAIR_MARKERS)  # type: ignore[assignment]

    def collate(self, examples, pad_id):
        a_mark, b_mark = self.markers
        seqs = [e["prompt_ids"] + a_mark + e["chosen_ids"] + b_mark + e["rejected_ids"] for e in examples]
        seqs += [e["prompt_ids"] + a_mark + e["rejected_ids"] + b_mark + e["chosen_ids"] for e in examples]
        batch = {
            "input_ids": pad(seqs, pad_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }
        return attach_meta(batch, examples)

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        rewards = policy(batch["input_ids"], batch["attention_mask"])  # [2B, 1]
        b = batch["index"].shape[0]
        logits = (rewards[:b, 0] - rewards[b:, 0]) / 2
        losses = reward_loss("preference", logits)
        n, d = float(b), logits.detach()
        return losses.sum(), {"accuracy": (self.accuracy(d), n), "p_chosen": (float(torch.sigmoid(d).sum()), n)}
