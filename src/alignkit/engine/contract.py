"""What an algorithm gives the training engine, and the narrow context its hooks receive.

An algorithm names the kind of data it reads, how to batch it, how much each batch weighs in the loss
average, and the summed loss of a batch. The engine divides the summed loss by the total weight of the
whole optimizer step (over micro-batches and processes), so splitting a batch into micro-batches or
processes never changes the gradient.

Hooks (``setup``, ``before_update``, ``after_step``, ``rollout``, ``evaluate``) receive a
:class:`Context`: the live model and tokenizer, the device, the distribution strategy (sums, gathers,
process layout), the current step, batching and the reference factory. They never see the trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from ..config import Recipe

if TYPE_CHECKING:
    from ..models.reference import Reference
    from .strategies import Strategy

# name -> (sum over the batch, count it averages over)
Metrics = dict[str, tuple[torch.Tensor | float, float]]


class Context:
    """What an algorithm's hooks may use. Built by the trainer; every attribute is documented here.

    * ``model`` — the live policy model (unwrapped: no DDP/FSDP wrapper), ``tokenizer``, ``device``.
    * ``strategy`` — the distribution strategy: ``world``, ``rank``, ``is_main``, ``sum(t)``,
      ``gather(t)``, ``mean(stats)``, ``barrier()``.
    * ``seed`` — the recipe's seed; ``step`` — the optimizer step being taken (0-based).
    * ``batch_size``, ``micro_batch_size`` — the train section's values; ``progress`` — show bars.
    * ``train_examples``, ``eval_examples`` — the encoded examples of the current fit (eval may be None).
    * ``resumed`` — whether this fit resumed from a checkpoint.
    * ``autocast()`` — the run's precision context; ``collate(examples)`` — one batch on the device;
      ``micro_batches(examples, indices)`` — the engine's split of examples into micro-batches.
    * ``reference(keep=True, temperature=1.0)`` — the starting policy as a
      :class:`~alignkit.models.reference.Reference` (a frozen copy, the LoRA base, or with ``keep=False``
      the live policy for work before the first update).
    * ``cache(examples, compute, keys, label, only=None)`` — evaluate ``compute(batch) -> [B, len(keys)]``
      once per example (no gradient, split over processes) and store the values on the examples.
    * ``used_indices()`` — the train examples the remaining steps of this fit will read (for caches).
    """

    def __init__(self, **fields: Any):
        self.__dict__.update(fields)

    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    strategy: "Strategy"
    seed: int
    step: int
    batch_size: int
    micro_batch_size: int | None
    progress: bool
    train_examples: list[dict[str, Any]]
    eval_examples: list[dict[str, Any]] | None
    resumed: bool
    autocast: Callable[[], Any]
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    micro_batches: Callable[[list[dict[str, Any]], list[int]], list[dict[str, torch.Tensor]]]
    reference: Callable[..., "Reference"]
    cache: Callable[..., None]
    used_indices: Callable[[], list[int]]


class Algorithm:
    name: str = ""
    data_kind: str = "sft"
    shuffle: bool = True  # False: the engine keeps the order of prepare_examples (e.g. a curriculum)
    # metrics the end-of-training summary and the model card show first -> last (those the algorithm logs)
    key_metrics: tuple[str, ...] = ("rewards/accuracy", "rewards/margins", "accuracy", "margin", "step_accuracy", "reward", "kl")

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
        """Trained or changing modules besides the policy (saved in checkpoints, e.g. a critic)."""
        return {}

    def samples_per_example(self) -> int:
        """Completions drawn per training example in a step (online RL: the group size); the start banner."""
        return 1

    def progress_info(self, loss: float, stats: dict[str, float]) -> str:
        """The progress bar's text after a step (``stats``: the step's rollout statistics and timings)."""
        return f"loss {loss:.4f}"

    def updates_per_step(self) -> int:
        """Optimizer updates per training step (more than one for multi-epoch online RL)."""
        return 1

    def before_update(self, ctx: Context, policy: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> None:
        """Work over every micro-batch of one optimizer step (or evaluation pass) before their losses, on
        all processes: e.g. a step-level statistic that each micro-batch's loss then reads (KTO's z0)."""

    def after_step(self, ctx: Context, step: int) -> None:
        """Work after optimizer step ``step`` (1-based), e.g. refreshing a reference model."""

    def setup(self, ctx: Context) -> None:
        """Work before the first step of a fit (e.g. reference log-probs); the policy is not yet wrapped."""

    def close(self) -> None:
        """Release what the algorithm holds (e.g. rollout engines) when the trainer closes."""

    def loss(self, policy: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """(summed loss of the batch, metrics); ``policy`` is :meth:`module` of the model (DDP-wrapped when
        distributed): by default it maps (input_ids, attention_mask, loss_mask) to target log-probs [B, T]."""
        raise NotImplementedError
