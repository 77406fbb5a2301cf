"""``reward.type: process``: a process reward model (token classifier) trained with per-step BCE
(:func:`~alignkit.objectives.reward.process`) on rows of the ``steps`` record kind (:mod:`alignkit.data.kinds`):
``prompt``, ``steps`` (or a ``completion`` cut by ``reward.step_split``), ``labels`` (one 0/1 per step),
reading the logit at each step's last token."""

from __future__ import annotations

import torch

from ...data.collate import pad
from ...engine.contract import Metrics
from ...objectives.reward import reward_loss
from .base import REWARD_TYPES, RowRewardModelling


@REWARD_TYPES.register("process")
class ProcessRewardModelling(RowRewardModelling):
    reward_type = "process"
    row_kind = "steps"

    def step_split(self) -> str:
        """``reward.step_split``, else the task's default (``task.reward_step_split``), else a newline."""
        from ...data.kinds import DEFAULT_STEP_SPLIT

        if self.cfg.step_split is not None:
            return self.cfg.step_split
        default = getattr(self.task(), "reward_step_split", None) if self._from_task() else None
        return default or DEFAULT_STEP_SPLIT

    def kind_options(self):
        return {"step_split": self.step_split()}

    def task_rows(self, task, n, split):
        from ...rewards.task_data import process_rows

        return process_rows(task, n, split)

    def build_model(self, path, model_config, load_reward_model):
        model = load_reward_model(path, model_config, seed=self.recipe.train.seed, token_level=True)
        model.config.reward_type = "process"
        model.config.step_split = self.step_split()
        model.config.step_aggregate = self.cfg.step_aggregate
        return model

    def module(self, model):
        from ...rewards.models import ProcessForward

        return ProcessForward(model)

    def collate(self, examples, pad_id):
        seqs = [e["input_ids"] for e in examples]
        width = max(len(e["step_ends"]) for e in examples)
        positions = torch.zeros(len(examples), width, dtype=torch.long)
        labels = torch.zeros(len(examples), width, dtype=torch.float32)
        mask = torch.zeros(len(examples), width, dtype=torch.float32)
        for i, e in enumerate(examples):
            n = len(e["step_ends"])
            positions[i, :n] = torch.tensor(e["step_ends"], dtype=torch.long)
            labels[i, :n] = torch.tensor(e["step_labels"], dtype=torch.float32)
            mask[i, :n] = 1.0
        return {
            "input_ids": pad(seqs, pad_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "step_positions": positions,
            "step_labels": labels,
            "step_mask": mask,
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        logits = policy(batch["input_ids"], batch["attention_mask"])  # [B, T]
        step_logits = logits.gather(1, batch["step_positions"])
        labels, mask = batch["step_labels"].to(logits.device), batch["step_mask"].to(logits.device)
        losses = reward_loss("process", step_logits, labels, mask)
        with torch.no_grad():
            correct = ((step_logits.detach() > 0) == (labels > 0.5)).float() * mask
            n = float(batch["index"].shape[0])
            metrics: Metrics = {"step_accuracy": (float(correct.sum()), float(mask.sum())), "steps": (float(mask.sum()), n)}
        return losses.sum(), metrics
