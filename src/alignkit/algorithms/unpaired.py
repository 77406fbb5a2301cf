"""Unpaired binary feedback (thumbs up / down): KTO, BCO and APO-zero on the shared engine.

Rows are ``prompt`` + ``completion`` + ``label``. ``unpaired.loss`` names an entry of
:func:`alignkit.objectives.preference.unpaired_loss`:

* ``kto`` (Ethayarajh et al. 2024): the reference point z0 is estimated from *mismatched* pairs — each
  prompt with the completion of the next example (fixed once, as a data-level shift) — as the clamped,
  detached mean of their policy/reference log-ratios over the micro-batch; ``desirable_weight`` and
  ``undesirable_weight`` balance the two labels.
* ``bco`` (Jung et al. 2024): the reward shift δ is the running mean of past rewards, kept across steps.
* ``apo_zero_unpaired`` (D'Oosterlinck et al. 2024).

Reference log-probs (of the completions and of the mismatched pairs) are cached before training, like DPO's.
"""

from __future__ import annotations

import torch

from ..data.collate import collate_sequences
from ..objectives.preference import RunningMean, UnpairedLogps, unpaired_loss
from .base import Algorithm, Metrics, cache_per_example, starting_reference


class Unpaired(Algorithm):
    name = "kto"
    data_kind = "unpaired"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.unpaired
        self.name = self.cfg.loss
        self.mismatched = self.cfg.loss == "kto"
        self.shift = RunningMean(self.cfg.bco_momentum) if self.cfg.loss == "bco" else None

    def _params(self) -> dict:
        if self.cfg.loss == "kto":
            return {"desirable_weight": self.cfg.desirable_weight, "undesirable_weight": self.cfg.undesirable_weight}
        if self.cfg.loss == "bco":
            return {"delta": self.shift.mean}
        return {}

    def setup(self, trainer) -> None:
        for examples in (trainer.train_examples, trainer.eval_examples):
            if not examples:
                continue
            for i, e in enumerate(examples):
                partner = examples[(i + 1) % len(examples)]
                completion = partner["input_ids"][len(partner["prompt_ids"]) :]
                e["kl_ids"] = e["prompt_ids"] + completion
                e["kl_mask"] = [0] * len(e["prompt_ids"]) + [1] * len(completion)
        module, context = starting_reference(trainer, keep=False)

        def reference(batch):
            with context():
                logps = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum(-1)
            b = batch["label"].numel()
            return logps.view(-1, b).T if self.mismatched else logps.view(b, 1)

        keys = ("ref_logp", "kl_ref_logp") if self.mismatched else ("ref_logp",)
        for examples in (trainer.train_examples, trainer.eval_examples):
            if examples:
                cache_per_example(trainer, examples, reference, keys)

    def collate(self, examples, pad_id):
        ids = [e["input_ids"] for e in examples]
        masks = [e["loss_mask"] for e in examples]
        if self.mismatched:
            ids += [e["kl_ids"] for e in examples]
            masks += [e["kl_mask"] for e in examples]
        batch = collate_sequences(ids, masks, pad_id)
        batch["label"] = torch.tensor([e["label"] for e in examples], dtype=torch.bool)
        for key in ("ref_logp", "kl_ref_logp"):
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
        return batch

    def weight(self, batch) -> float:
        return float(batch["label"].numel())

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        b = batch["label"].numel()
        sums = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum(-1)
        logps = UnpairedLogps(
            logp=sums[:b], ref_logp=batch["ref_logp"], label=batch["label"],
            tokens=batch["loss_mask"][:b, 1:].sum(-1).float(),
            kl_logp=sums[b:] if self.mismatched else None,
            kl_ref_logp=batch.get("kl_ref_logp") if self.mismatched else None,
        )
        losses = unpaired_loss(self.cfg.loss, logps, beta=self.cfg.beta, **self._params())
        rewards = (self.cfg.beta * (logps.logp - logps.ref_logp)).detach()
        if self.shift is not None and torch.is_grad_enabled():
            self.shift.update(rewards)
        good, bad = batch["label"], ~batch["label"]
        metrics: Metrics = {
            "rewards/desirable": (rewards[good].sum(), float(good.sum())),
            "rewards/undesirable": (rewards[bad].sum(), float(bad.sum())),
            "logps/desirable": (logps.logp.detach()[good].sum(), float(good.sum())),
            "logps/undesirable": (logps.logp.detach()[bad].sum(), float(bad.sum())),
        }
        if self.mismatched:
            metrics["kl"] = ((logps.kl_logp - logps.kl_ref_logp).detach().sum(), float(b))
        return losses.sum(), metrics
