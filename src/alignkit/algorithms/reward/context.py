"""``reward.type: context``: a context-aware reward model ``r(c, x, y)`` (Pitis et al. 2024, "Improving
Context-Aware Preference Modeling for Language Models").

A preference is often under-specified until a context says what the user wants; the model reads the context
string ``c`` with the prompt and is trained with Bradley–Terry on ``P(y_c ≻ y_r | x, c) = σ(r(c, x, y_c) −
r(c, x, y_r))``. The input is the prompt conditioned on ``c`` exactly as the ``system`` data format does
(:func:`alignkit.rewards.conditioned.conditioned_prompt`: ``"{c}\\n{prompt}"``), so one model serves every
context and a user changes the ranking by changing ``c``.

Rows: pairs ``prompt``, ``chosen``, ``rejected`` and the context in the field ``reward.context_key`` (default
``context``); a missing or empty context is a :class:`~alignkit.data.errors.DataError` naming file, row and
field. Other fields (e.g. ``group``) travel as metadata. With no ``data.train`` the rows come from the task:
on a task with user groups (``pluralistic``) each pair is labelled by a group drawn by its share
(Bradley–Terry on that group's reward), and its context is one of the group's *training* wordings
(:data:`CONTEXT_WORDINGS`, by the sign of the group's reward); the eval split uses the *unseen* wordings,
so ``eval/accuracy`` is the accuracy under paraphrases never trained on.

:class:`ConditionedRewardModelling` is the shared base of this type and ``principles`` (SALMON): a single-output
sequence classifier on conditioned prompts, Bradley–Terry (``reward.loss``) on the pairs. The saved folder's
``config.json`` carries ``reward_type`` and ``condition_key``; as a reward source it takes the condition in
the spec (``{type: model, path: ..., context: "..."}``, :mod:`alignkit.rewards.conditioned`).

Logged: ``accuracy``, ``margin``, and ``accuracy/group/<g>`` when the rows carry a ``group``.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import torch

from ...data.collate import collate_pairs
from ...engine.contract import Metrics
from ...objectives.reward import reward_loss
from ...rewards.conditioned import check_condition, conditioned_prompt
from .base import REWARD_TYPES, RowRewardModelling

# context wordings by the sign of a group's reward: "train" ones label the training pairs, "unseen" ones the eval split
CONTEXT_WORDINGS: dict[int, dict[str, tuple[str, ...]]] = {
    1: {
        "train": ("The reader likes positive reviews.", "I enjoy warm, upbeat reviews.", "Tell me what was good about it."),
        "unseen": ("This user wants praise: positive reviews are best.", "Cheerful reviews, please."),
    },
    -1: {
        "train": ("The reader likes negative reviews.", "I enjoy harsh, critical reviews.", "Tell me what was bad about it."),
        "unseen": ("This user wants complaints: negative reviews are best.", "Gloomy reviews, please."),
    },
}


def group_contexts(task: Any, wordings: str = "train") -> dict[str, tuple[str, ...]]:
    """``{group: its context wordings}`` of a task with groups (``wordings``: ``train`` or ``unseen``)."""
    groups = getattr(task, "groups", None)
    if not groups:
        raise ValueError(f"reward.type=context generates its rows from a task with user groups (pluralistic), not {getattr(task, 'name', task)!r}; "
                         "give data.train pairs with a context field instead")
    return {g: CONTEXT_WORDINGS[1 if sign > 0 else -1][wordings] for g, _, sign in groups}


def prompt_pairs(task: Any, n: int, split: str, tag: str) -> Iterator[tuple[str, random.Random, str, str]]:
    """For prompt ``i`` of the split: ``(prompt, rng, a, b)``, two different base samples drawn with the row's
    own stream ``(task seed, split, tag, i)`` (the same stream then labels the row)."""
    for i, prompt in enumerate(task.prompts(n, split)):
        rng = random.Random(f"{task.seed}-{split}-{tag}-{i}")
        pair = distinct_pair(task, prompt, rng)
        if pair is None:
            raise RuntimeError(f"task {task.name}: no two different completions for prompt {prompt!r}")
        yield prompt, rng, *pair


def distinct_pair(task: Any, prompt: str, rng: random.Random, tries: int = 16) -> tuple[str, str] | None:
    """Two different base samples for ``prompt`` (None when ``tries`` draws never differ)."""
    a = task.sample_completion(prompt, rng)
    for _ in range(tries):
        b = task.sample_completion(prompt, rng)
        if b != a:
            return a, b
    return None


class ConditionedRewardModelling(RowRewardModelling):
    """A scalar Bradley–Terry reward model on prompts conditioned on the row field :attr:`key`."""

    row_kind = "pair"
    condition = "context"  # the kind of condition (context string / principle list)

    @property
    def key(self) -> str:
        return self.cfg.context_key

    def build_model(self, path, model_config, load_reward_model):
        model = super().build_model(path, model_config, load_reward_model)
        model.config.condition_key = self.key
        return model

    def prepare_row(self, e: dict, encoder, source: str) -> dict:
        from ...data.errors import DataError
        from ...data.kinds import ENCODED_KEYS, check_row

        row = e.get("row", e.get("_row", 0))
        if e.get(self.key) is None:
            raise DataError(source, row, self.key, f"missing: reward.type={self.cfg.type} conditions every pair on it "
                                                   f"(set reward.{self.condition}_key to the field that holds it)")
        try:
            condition = check_condition(e[self.key], self.condition)
        except ValueError as err:
            raise DataError(source, row, self.key, str(err)) from None
        data = {k: v for k, v in e.items() if k not in ENCODED_KEYS and k != self.key}
        record = check_row(data, "pair", source, row) | {"_row": row}
        record["prompt"] = conditioned_prompt(condition, record["prompt"])
        record["meta"] = {**record.get("meta", {}), self.key: condition if isinstance(condition, str) else " | ".join(condition)}
        return encoder.encode(record, "pair")

    def collate(self, examples, pad_id):
        return collate_pairs(examples, pad_id)

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        rewards = policy(batch["input_ids"], batch["attention_mask"])[:, 0]
        b = batch["index"].shape[0]
        rc, rr = rewards[:b], rewards[b:]
        losses = reward_loss(self.cfg.loss, rc, rr)
        with torch.no_grad():
            d = (rc - rr).detach()
            n = float(b)
            metrics: Metrics = {"accuracy": (self.accuracy(d), n), "margin": (float(d.sum()), n)}
            groups = (batch.get("meta") or {}).get("group")
            if groups is not None:
                for g in sorted({str(x) for x in groups}):
                    sel = torch.tensor([str(x) == g for x in groups], device=d.device)
                    metrics[f"accuracy/group/{g}"] = (self.accuracy(d[sel]), float(sel.sum()))
        return losses.sum(), metrics


@REWARD_TYPES.register("context")
class ContextRewardModelling(ConditionedRewardModelling):
    reward_type = "context"
    condition = "context"

    def task_rows(self, task, n: int, split: str) -> list[dict]:
        """Row ``i``: prompt ``i``, a pair labelled by a group drawn by its share, and one of that group's
        context wordings (training wordings for ``train``, unseen ones for ``eval``)."""
        contexts = group_contexts(task, "train" if split == "train" else "unseen")
        judge = task.pair_judge(self.recipe.task.label_temperature)
        rows = []
        for prompt, rng, a, b in prompt_pairs(task, n, split, "context"):
            p_a, extra = judge(prompt, a, b, rng)
            chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra, self.key: rng.choice(contexts[extra["group"]])})
        return rows
