"""Unpaired binary feedback (thumbs up / down): KTO, BCO and APO-zero on the shared engine.

Rows are ``prompt`` + ``completion`` + ``label``. ``unpaired.loss`` names an entry of
:func:`alignkit.objectives.unpaired_loss`:

* ``kto`` (Ethayarajh et al. 2024): the reference point z0 is estimated from *mismatched* pairs — each
  prompt with the completion of the next example (fixed once, as a data-level shift) — as the clamped,
  detached mean of their policy/reference log-ratios over the whole optimizer step (every micro-batch,
  every process: one no-grad pass before the step's losses), so micro-batching and the number of
  processes do not change it; ``desirable_weight`` and ``undesirable_weight`` balance the two labels.
* ``bco`` (Jung et al. 2024): the reward shift δ is the running mean of past rewards, updated once after
  each step with the rewards of all its micro-batches and processes (so every micro-batch of a step sees
  the same δ), and saved in checkpoints (``bco_shift.safetensors``) so a resumed run continues it.
* ``apo_zero_unpaired`` (D'Oosterlinck et al. 2024).

Reference log-probs (of the completions and of the mismatched pairs) are cached before training, like DPO's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.collate import attach_meta, collate_sequences
from ..engine.contract import Algorithm, Metrics
from ..objectives.unpaired import RunningMean, UnpairedLogps, unpaired_loss


class Unpaired(Algorithm):
    name = "kto"
    data_kind = "unpaired"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.unpaired
        self.name = self.cfg.loss
        self.mismatched = self.cfg.loss == "kto"
        self.shift = ShiftState() if self.cfg.loss == "bco" else None  # BCO's δ, saved in checkpoints
        self._step_rewards = torch.zeros(2, dtype=torch.float64)  # (sum, count) of this step's rewards

    def _params(self, batch) -> dict:
        if self.cfg.loss == "kto":
            return {"desirable_weight": self.cfg.desirable_weight, "undesirable_weight": self.cfg.undesirable_weight, "z0": batch["z0"]}
        if self.cfg.loss == "bco":
            return {"delta": float(self.shift.mean)}
        return {}

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"bco_shift": self.shift} if self.shift is not None else {}

    def before_update(self, ctx, policy, batches) -> None:
        """KTO: z0 over every micro-batch and process of the step (a no-grad pass over the mismatched rows)."""
        if not self.mismatched:
            return
        total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
        with torch.no_grad(), ctx.autocast():
            for batch in batches:
                kl_logp = policy(batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_loss_mask"]).sum(-1).float()
                ratios = kl_logp - batch["kl_ref_logp"]
                batch["kl_sum"] = ratios.sum()
                total += torch.stack([ratios.sum().double(), torch.tensor(float(ratios.numel()), dtype=torch.float64, device=ctx.device)])
        total = ctx.strategy.sum(total)
        z0 = (total[0] / total[1].clamp(min=1)).clamp(min=0).float()
        for batch in batches:
            batch["z0"] = z0

    def after_step(self, ctx, step: int) -> None:
        """BCO: fold the step's rewards (all micro-batches and processes) into the shift."""
        if self.shift is None:
            return
        total = ctx.strategy.sum(self._step_rewards.to(ctx.device)).cpu()
        self._step_rewards = torch.zeros(2, dtype=torch.float64)
        if total[1] > 0:
            running = RunningMean(self.cfg.bco_momentum, initial=float(self.shift.mean))
            running.count = int(self.shift.count)
            running.update_mean(float(total[0] / total[1]), int(total[1]))
            self.shift.mean.fill_(running.mean)
            self.shift.count.fill_(running.count)

    def setup(self, ctx) -> None:
        for examples in (ctx.train_examples, ctx.eval_examples):
            if not examples:
                continue
            for i, e in enumerate(examples):
                partner = examples[(i + 1) % len(examples)]
                completion = partner["input_ids"][len(partner["prompt_ids"]) :]
                e["kl_ids"] = e["prompt_ids"] + completion
                e["kl_mask"] = [0] * len(e["prompt_ids"]) + partner["loss_mask"][len(partner["prompt_ids"]) :]  # a trajectory's tool turns stay untrained
        module = ctx.reference(keep=False)

        def reference(batch):
            rows = ("", "kl_") if self.mismatched else ("",)
            return torch.stack([module(batch[f"{r}input_ids"], batch[f"{r}attention_mask"], batch[f"{r}loss_mask"]).sum(-1) for r in rows], dim=1)

        keys = ("ref_logp", "kl_ref_logp") if self.mismatched else ("ref_logp",)
        ctx.cache(ctx.train_examples, reference, keys, only=ctx.used_indices())
        if ctx.eval_examples:
            ctx.cache(ctx.eval_examples, reference, keys)

    def collate(self, examples, pad_id):
        batch = collate_sequences([e["input_ids"] for e in examples], [e["loss_mask"] for e in examples], pad_id)
        if self.mismatched:
            kl = collate_sequences([e["kl_ids"] for e in examples], [e["kl_mask"] for e in examples], pad_id)
            batch.update({f"kl_{k}": v for k, v in kl.items()})
        batch["label"] = torch.tensor([e["label"] for e in examples], dtype=torch.bool)
        for key in ("ref_logp", "kl_ref_logp"):
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
        return attach_meta(batch, examples)

    def weight(self, batch) -> float:
        return float(batch["label"].numel())

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        b = batch["label"].numel()
        sums = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum(-1)
        logps = UnpairedLogps(logp=sums, ref_logp=batch["ref_logp"], label=batch["label"], tokens=batch["loss_mask"][:, 1:].sum(-1).float())
        losses = unpaired_loss(self.cfg.loss, logps, beta=self.cfg.beta, **self._params(batch))
        rewards = (self.cfg.beta * (logps.logp - logps.ref_logp)).detach()
        if self.shift is not None and torch.is_grad_enabled():
            self._step_rewards += torch.tensor([float(rewards.double().sum()), float(b)], dtype=torch.float64)
        good, bad = batch["label"], ~batch["label"]
        metrics: Metrics = {
            "rewards/desirable": (rewards[good].sum(), float(good.sum())),
            "rewards/undesirable": (rewards[bad].sum(), float(bad.sum())),
            "logps/desirable": (logps.logp.detach()[good].sum(), float(good.sum())),
            "logps/undesirable": (logps.logp.detach()[bad].sum(), float(bad.sum())),
        }
        if self.mismatched:
            metrics["kl"] = (batch["kl_sum"], float(b))
        return losses.sum(), metrics


class ShiftState(nn.Module):
    """BCO's running reward shift as buffers, so checkpoints carry it (``extra_modules``)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
