"""The shared base of reward-model training: :class:`RewardModelling` and the type registry.

``RewardModelling(recipe)`` builds the class registered under ``recipe.reward.type`` (each type is a small
subclass in its own file). :class:`RowRewardModelling` is the base of the types that read their own rows
(multi-objective ratings, process steps): the trainer loads them as ``prompt``-kind rows (which carry every
field), and :meth:`RowRewardModelling.setup` checks and encodes each one with the type's record kind
(:mod:`alignkit.data.kinds`), generating the rows from the task when there is no data file.
"""

from __future__ import annotations

from typing import Any

import torch

from ...core.registry import Registry
from ...engine.contract import Algorithm

REWARD_TYPES: Registry[type] = Registry("reward type")


class RewardModelling(Algorithm):
    """Reward-model training (``algorithm: reward``); ``RewardModelling(recipe)`` is an instance of the
    class registered for ``recipe.reward.type``."""

    name = "reward"
    data_kind = "pair"
    reward_type = "scalar"

    def __new__(cls, recipe, *args: Any, **kwargs: Any):
        if cls is RewardModelling:
            cls = REWARD_TYPES.get(recipe.reward.type)
        return super().__new__(cls)

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.reward

    # ----------------------------------------------------------------------------------------------
    def _from_task(self) -> bool:
        return self.recipe.data.train is None

    def task(self):
        """The recipe's task (where rows and defaults come from when there is no data file)."""
        from ...tasks import get_task

        return get_task(self.recipe.task)

    def load_model(self, path, model_config, adapter=None):
        from ...rewards.models import RewardEnsemble, is_ensemble, load_reward_model

        if model_config.lora is not None or adapter is not None:
            raise ValueError("reward models are trained with full weights here (model.lora is not supported for algorithm: reward)")
        if is_ensemble(path):
            return RewardEnsemble.from_pretrained(path, model_config)
        return self.build_model(path, model_config, load_reward_model)

    def build_model(self, path, model_config, load_reward_model):
        """A new model of this type from a checkpoint (a single-logit sequence classifier by default)."""
        model = load_reward_model(path, model_config, seed=self.recipe.train.seed)
        model.config.reward_type = self.reward_type
        return model

    def module(self, model):
        from ...rewards.models import RewardForward

        return RewardForward(model)

    def weight(self, batch) -> float:
        return float(batch["index"].shape[0])

    @staticmethod
    def accuracy(d: torch.Tensor) -> float:
        """Pairs ranked right (a tie counts half), summed."""
        return float(((d > 0).float() + 0.5 * (d == 0).float()).sum())


class RowRewardModelling(RewardModelling):
    """A reward type that reads its own rows of record kind ``row_kind`` (see the module docstring)."""

    row_kind = ""
    data_kind = "prompt"

    def __init__(self, recipe):
        super().__init__(recipe)
        if recipe.data.kind not in ("auto", "prompt"):
            raise ValueError(f"reward.type={self.cfg.type} reads its own rows (data.kind auto or prompt), not data.kind={recipe.data.kind}")
        if self.cfg.ensemble > 1:
            raise ValueError(f"reward.type={self.cfg.type} is trained without reward.ensemble")

    def kind_options(self) -> dict[str, Any]:
        """Options of :attr:`row_kind`'s check (e.g. the attribute names)."""
        return {}

    def task_rows(self, task, n: int, split: str) -> list[dict]:
        """``n`` generated rows for ``split`` (row ``i`` for prompt ``i`` of ``task.prompts(n, split)``)."""
        raise NotImplementedError

    def prepare_row(self, e: dict, encoder, source: str) -> dict:
        """One row checked as :attr:`row_kind` and encoded (a :class:`DataError` names the problem)."""
        from ...data.kinds import ENCODED_KEYS, check_row

        row = e.get("row", e.get("_row", 0))
        data = {k: v for k, v in e.items() if k not in ENCODED_KEYS}
        record = check_row(data, self.row_kind, source, row, **self.kind_options()) | {"_row": row}
        return encoder.encode(record, self.row_kind)

    def setup(self, ctx) -> None:
        """Check and encode the fit's prompt-kind examples in place (generating them from the task first
        when there is no data file); examples already prepared by an earlier fit are left as they are."""
        from ...data.encode import Encoder

        data = self.recipe.data
        for split, examples, source in (("train", ctx.train_examples, data.train), ("eval", ctx.eval_examples, data.eval)):
            todo = [e for e in examples or [] if e.get("kind") != self.row_kind]
            if not todo:
                continue
            name = source or f"<task {self.recipe.task.name}:{split}>"
            if source is None:
                self._attach_task_rows(todo, split)
            encoder = Encoder(ctx.tokenizer, data.max_length, data.truncation, source=name)
            for e in todo:
                prepared = self.prepare_row(e, encoder, name)
                prepared["index"], prepared["kind"] = e["index"], self.row_kind
                e.clear()
                e.update(prepared)

    def _attach_task_rows(self, examples: list[dict], split: str) -> None:
        rows = self.task_rows(self.task(), len(examples), split)
        for e, row in zip(examples, rows, strict=True):
            if e["prompt"] != row["prompt"]:
                raise RuntimeError("generated task rows do not line up with the trainer's prompts")
            e.update(row)
