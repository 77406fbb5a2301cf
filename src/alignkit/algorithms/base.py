"""What an algorithm gives the training engine.

An algorithm names the kind of data it reads, how to batch it, how much each batch weighs in the loss
average, and the summed loss of a batch. The engine divides the summed loss by the total weight of the
whole optimizer step (over micro-batches and processes), so splitting a batch into micro-batches or
processes never changes the gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..config import Recipe

if TYPE_CHECKING:
    from ..engine.trainer import Trainer

# name -> (sum over the batch, count it averages over)
Metrics = dict[str, tuple[torch.Tensor | float, float]]


class Algorithm:
    name: str = ""
    data_kind: str = "sft"
    shuffle: bool = True  # False: the engine keeps the order of prepare_examples (e.g. a curriculum)

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def collate(self, examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def weight(self, batch: dict[str, torch.Tensor]) -> float:
        """How many units (tokens, pairs, ...) this batch's summed loss is made of."""
        raise NotImplementedError

    def load_model(self, path, model_config, adapter=None) -> torch.nn.Module:
        """The trainable model from a checkpoint folder (a causal LM unless the algorithm says otherwise)."""
        from ..models.loading import load_causal_lm

        return load_causal_lm(path, model_config, adapter=adapter)

    def module(self, model: torch.nn.Module) -> torch.nn.Module:
        """What one forward of the engine runs (and DDP wraps): target log-probs of a causal LM by default."""
        from ..models.logprobs import TargetLogProbs

        return TargetLogProbs(model)

    def unit_key(self, example: dict[str, Any]):
        """Consecutive examples with the same non-None key always share a micro-batch (a pair, a group)."""
        return None

    def example_tokens(self, example: dict[str, Any]) -> int:
        """Tokens an example puts in a batch (for length-bucketed micro-batches)."""
        for key in ("input_ids", "ids"):
            if key in example:
                return len(example[key])
        extra = sum(len(example[k]) for k in ("chosen_ids", "rejected_ids") if k in example)
        extra += sum(len(c) for c in example.get("completion_ids", []))
        return len(example.get("prompt_ids", [])) + extra

    def unit_rows(self, unit: list[dict[str, Any]]) -> list[int]:
        """Lengths of the batch rows a unit of examples becomes (one row per example by default)."""
        return [self.example_tokens(e) for e in unit]

    def prepare_examples(self, examples: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
        """Turn encoded examples of ``kind`` into what :meth:`collate` takes (identity by default)."""
        if kind != self.data_kind:
            raise ValueError(f"algorithm '{self.name}' trains on '{self.data_kind}' data, not data.kind={kind}")
        return examples

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        """Trained modules besides the policy (saved in checkpoints, e.g. a critic)."""
        return {}

    def updates_per_step(self) -> int:
        """Optimizer updates per training step (more than one for multi-epoch online RL)."""
        return 1

    def before_update(self, trainer: "Trainer", policy: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> None:
        """Work over every micro-batch of one optimizer step (or evaluation pass) before their losses, on
        all processes: e.g. a step-level statistic that each micro-batch's loss then reads (KTO's z0)."""

    def after_step(self, trainer: "Trainer", step: int) -> None:
        """Work after optimizer step ``step`` (1-based), e.g. refreshing a reference model."""

    def setup(self, trainer: "Trainer") -> None:
        """Work before the first step (e.g. reference log-probs); the policy is not yet wrapped."""

    def loss(self, policy: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """(summed loss of the batch, metrics); ``policy`` is :meth:`module` of the model (DDP-wrapped when
        distributed): by default it maps (input_ids, attention_mask, loss_mask) to target log-probs [B, T]."""
        raise NotImplementedError


def cache_per_example(trainer: "Trainer", examples: list[dict[str, Any]], compute, keys: tuple[str, ...], label: str = "reference log-probs") -> None:
    """Evaluate ``compute(batch) -> [B, len(keys)]`` once for every example (no gradient, the run's
    precision), split over processes and summed back, and store the values on the examples under ``keys``."""
    from ..engine.trainer import make_progress

    values = torch.zeros(len(examples), len(keys), dtype=torch.float64)
    mine = list(range(trainer.dist.rank, len(examples), trainer.dist.world))
    size = trainer.cfg.micro_batch_size or max(1, trainer.cfg.batch_size // trainer.dist.world)
    with make_progress(trainer.cfg.progress and trainer.dist.is_main) as progress:
        bar = progress.add_task(label, total=len(mine), info="")
        for start in range(0, len(mine), size):
            idx = mine[start : start + size]
            batch = trainer.collate([examples[i] for i in idx])
            with torch.no_grad(), trainer.autocast():
                values[idx] = compute(batch).double().cpu()
            progress.update(bar, advance=len(idx))
    values = trainer.dist.sum(values.to(trainer.device)).cpu()
    for example, row in zip(examples, values.tolist()):
        example.update(zip(keys, row))


def starting_reference(trainer: "Trainer", keep: bool):
    """(module, context) giving the *starting* policy's target log-probs.

    LoRA: the policy itself with its adapter disabled. Otherwise a frozen copy when ``keep`` (it is run
    during training) or when resuming (the starting weights are reloaded); else the policy as it is now,
    good only for work done before the first step (e.g. a reference cache).
    """
    import contextlib

    from ..models.loading import is_peft
    from ..models.logprobs import TargetLogProbs

    model = trainer.model
    if is_peft(model):
        return TargetLogProbs(model), model.disable_adapter
    if keep or trainer.resumed_from is not None:
        return TargetLogProbs(trainer.frozen_reference()), contextlib.nullcontext
    return TargetLogProbs(model), contextlib.nullcontext
