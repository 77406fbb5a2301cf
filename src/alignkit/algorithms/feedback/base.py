"""What every feedback method shares: the registry, the once-per-example rewrite of encoded examples
into the method's sequences (it needs the tokenizer, so it runs in ``setup``), and inference conditioning.

A method reads examples of its record kind, encoded by the engine as usual, and rebuilds them in place
before the fit's first step (:meth:`FeedbackMethod.convert`): a hindsight sequence, a class- or
score-conditioned prompt, a refinement target. The number of examples never changes there (the data
order is fixed by then); methods that make several examples of one row do it in ``prepare_examples``.

Text that conditions a prompt is spliced in at the text level: the prompt's text (the row's own text
where the kind keeps it, else its tokens decoded) is formatted with the method's template and tokenized
whole, exactly as the conditioned prompt will be tokenized at inference. The conditioned prompt a trained
policy expects is written to ``<run>/conditioning.json`` (``{"method", "template"}``, ``{prompt}`` marks
the user's prompt) and returned by :meth:`FeedbackMethod.inference_prompt`; :func:`conditioned_prompt`
applies a run's file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ...core.registry import Registry
from ...data.collate import collate_sft
from ...data.errors import DataError
from ...engine.contract import Algorithm, Metrics

FEEDBACK_METHODS: Registry[type] = Registry("feedback method")
CONDITIONING_FILE = "conditioning.json"


def conditioned_prompt(run_dir: str | Path, prompt: str) -> str:
    """``prompt`` as the policy of ``run_dir`` (a run folder, or its ``final`` model folder) expects it at
    inference; unchanged when the run wrote no conditioning file."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir.parent):
        path = folder / CONDITIONING_FILE
        if path.exists():
            return json.loads(path.read_text())["template"].replace("{prompt}", prompt)
    return prompt


class FeedbackMethod(Algorithm):
    """Base of the methods of ``algorithm: feedback`` (``feedback.method`` picks one)."""

    name = "feedback"
    method = ""
    data_kinds: tuple[str, ...] = ("sft",)

    placeholders: tuple[str, ...] = ()  # what the method's ``template`` option must hold

    def __init__(self, recipe):
        super().__init__(recipe)
        self.options = getattr(recipe.feedback, self.method)  # the method's own section, feedback.<method>
        self.tokenizer = None
        self.max_length = recipe.data.max_length
        template = getattr(self.options, "template", None)
        missing = [p for p in self.placeholders if "{" + p + "}" not in (template or "")]
        if missing:
            raise ValueError(f"feedback.{self.method}.template must hold {', '.join('{' + p + '}' for p in self.placeholders)}, got {template!r}")

    # ----------------------------------------------------------------------------------------------
    def prepare_examples(self, examples, kind):
        if kind not in self.data_kinds:
            raise ValueError(f"feedback.method={self.method} trains on {' or '.join(self.data_kinds)} rows, not data.kind={kind}")
        return examples

    def setup(self, ctx) -> None:
        self.tokenizer = ctx.tokenizer
        self.before_convert(ctx)
        for split, examples in (("train", ctx.train_examples), ("eval", ctx.eval_examples)):
            for e in examples or []:
                if not e.get("_feedback"):
                    self.convert(e, ctx, split)
                    e["_feedback"] = True
        if ctx.strategy.is_main and self.recipe.train.save_final:
            out = self.recipe.output_dir
            out.mkdir(parents=True, exist_ok=True)
            (out / CONDITIONING_FILE).write_text(json.dumps({"method": self.method, "template": self.inference_prompt("{prompt}")}) + "\n")
        super().setup(ctx)

    def before_convert(self, ctx) -> None:
        """Work before the examples are rewritten (e.g. statistics over all of them)."""

    def convert(self, example: dict[str, Any], ctx, split: str) -> None:
        """Rewrite one encoded example in place into what :meth:`collate` takes."""

    def inference_prompt(self, prompt: str) -> str:
        """The prompt as the trained policy expects it at inference (unchanged by default)."""
        return prompt

    # ----------------------------------------------------------------------------------------------
    # text helpers
    # ----------------------------------------------------------------------------------------------
    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def source(self, split: str) -> str:
        data = self.recipe.data
        name = data.train if split == "train" else data.eval
        return name or f"<task {self.recipe.task.name}:{split}>"

    def error(self, example: dict[str, Any], split: str, field: str | None, problem: str) -> DataError:
        return DataError(self.source(split), example.get("row"), field, problem)

    def prompt_text(self, example: dict[str, Any], split: str) -> str:
        """The example's prompt as text: the row's own (kinds that keep it) or its tokens decoded."""
        text = (example.get("text") or {}).get("prompt")
        if isinstance(text, list):
            raise self.error(example, split, "prompt", f"feedback.method={self.method} conditions the prompt as text; give text prompts, not chat messages")
        if text is not None:
            return text
        if "prompt_ids" not in example:
            raise self.error(example, split, "messages", f"feedback.method={self.method} needs prompt + completion rows (a prompt to condition)")
        return self.tokenizer.decode(example["prompt_ids"])

    def completion_ids(self, example: dict[str, Any]) -> list[int]:
        """The completion's tokens of an sft-like example (EOS included)."""
        return example["input_ids"][len(example["prompt_ids"]):]

    def fits(self, example: dict[str, Any], split: str, ids: list[int], what: str) -> list[int]:
        if len(ids) > self.max_length:
            raise self.error(example, split, None, f"the {what} is {len(ids)} tokens, longer than data.max_length={self.max_length}")
        return ids

    def task(self):
        from ...tasks import get_task

        return get_task(self.recipe.task)

    def generated(self, split: str) -> bool:
        """Whether ``split``'s rows are generated by the task (no data file)."""
        return (self.recipe.data.train if split == "train" else self.recipe.data.eval) is None


class WeightedSequences(FeedbackMethod):
    """Methods whose examples are sft-like sequences (``input_ids``, ``loss_mask``) with an optional weight
    per example (``seq_weight``); the loss is ``−Σ_b w_b Σ_t log π`` over the step's trained tokens."""

    def collate(self, examples, pad_id):
        batch = collate_sft(examples, pad_id)
        batch["seq_weight"] = torch.tensor([float(e.get("seq_weight", 1.0)) for e in examples])
        return batch

    def weight(self, batch) -> float:
        return float(batch["loss_mask"][:, 1:].sum())

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        from ...objectives.feedback import weighted_nll

        token_logps = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        mask = batch["loss_mask"].clone()
        mask[:, 0] = 0
        losses = weighted_nll(token_logps, mask, batch["seq_weight"].to(token_logps.device))
        tokens = self.weight(batch)
        nll = -token_logps.detach().sum()
        return losses.sum(), {"nll": (nll, tokens), "weight": (batch["seq_weight"].sum(), float(batch["seq_weight"].numel()))}


class SelfSampledRounds(WeightedSequences):
    """Methods that rewrite their own targets with the current policy in ``options.rounds`` rounds (ILF's
    refine-and-select, DPA's direction-conditioned rejection sampling): once before training on every
    example not given as feedback, then on the train examples at each round boundary. Subclasses define
    :meth:`rewrite` (``examples`` in place) and read ``self.round``."""

    round = 0

    def rewrite(self, ctx, examples: list[dict], split: str) -> None:
        raise NotImplementedError

    def before_convert(self, ctx) -> None:
        from ...engine.loop import DataOrder

        cfg = self.recipe.train
        order = DataOrder(len(ctx.train_examples), cfg.batch_size, cfg.seed)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * order.per_epoch))
        self.round_steps = max(1, math.ceil(self.total_steps / self.options.rounds))
        for split, examples in (("train", ctx.train_examples), ("eval", ctx.eval_examples)):
            todo = [e for e in examples or [] if not e.get("_feedback")]
            if todo:
                self.rewrite(ctx, todo, split)

    def after_step(self, ctx, step: int) -> None:
        if self.options.rounds > 1 and step % self.round_steps == 0 and step < self.total_steps:
            self.round = step // self.round_steps
            self.rewrite(ctx, ctx.train_examples, "train")
