"""Conditioned reward models as reward sources: ``r(c, x, y)`` for a context string or a principle list ``c``.

A ``context`` reward model (``reward.type: context``) and a SALMON-style principle-following model
(``reward.type: principles``) are ordinary single-output sequence classifiers whose input is the prompt
conditioned on ``c`` exactly as the ``system`` data format folds a system message into a prompt
(:func:`alignkit.data.feedback_kinds.system_prompt`): ``"{c}\\n{prompt}"`` for a text prompt (a principle list
as ``- principle`` lines), a first system message for a chat prompt. :func:`conditioned_prompt` is that one
rendering, shared by training (``algorithms/reward/context.py``) and scoring here, so both see the same text.

As a reward source::

    {type: model, path: runs/principles-rm/final, principles: ["Prefer a negative tone."]}
    {type: model, path: runs/context-rm/final, context: "The reader likes negative reviews."}

The condition of the spec applies to every sample; a row field of the same name (``context`` / ``principles``,
passed by online RL as a keyword of ``score``) overrides it per sample. At RL time the user changes the
principles and the reward follows (SALMON's RL-time intervention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from .sources import _check_lengths, _ModelBacked

CONDITIONED_TYPES = ("context", "principles")


def check_condition(value: Any, kind: str) -> Any:
    """``value`` if it is a usable condition of ``kind`` (``context``: a non-empty string; ``principles``: a
    non-empty list of non-empty strings, or one string); a one-line ``ValueError`` otherwise."""
    if kind == "context":
        if isinstance(value, str) and value.strip():
            return value
        raise ValueError(f"expected a non-empty context string, got {value!r}")
    if isinstance(value, str) and value.strip():
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value):
        return list(value)
    raise ValueError(f"expected a non-empty list of principles (strings), got {value!r}")


def conditioned_prompt(condition: Any, prompt: Any) -> Any:
    """The prompt the model reads: ``prompt`` conditioned on a context string or a principle list."""
    from ..data.feedback_kinds import system_prompt

    return system_prompt(condition, prompt)


class ConditionedRewardSource(_ModelBacked):
    """A saved ``context`` / ``principles`` reward model scoring ``(condition, prompt, completion)``."""

    def __init__(self, path: str | Path, condition: Any = None, key: str | None = None, **kwargs: Any):
        super().__init__(path, **kwargs)
        self.kind = getattr(self.model.config, "reward_type", "context")
        self.key = key or getattr(self.model.config, "condition_key", None) or self.kind
        self.condition = None if condition is None else self._check(condition, "the reward spec")

    def _check(self, value: Any, where: str) -> Any:
        try:
            return check_condition(value, self.kind)
        except ValueError as e:
            raise ValueError(f"{self.path} ({self.kind} reward model): {where}: '{self.key}': {e}") from None

    def conditions(self, n: int, context: dict[str, Any]) -> list[Any]:
        """One condition per sample: the row field ``self.key`` when given, else the spec's."""
        per_row = context.get(self.key)
        if per_row is None:
            if self.condition is None:
                raise ValueError(f"{self.path} is a {self.kind} reward model: give its {self.key} in the reward spec "
                                 f"({{type: model, path: ..., {self.key}: ...}}) or as a row field '{self.key}'")
            return [self.condition] * n
        if len(per_row) != n:
            raise ValueError(f"{self.path}: {len(per_row)} values of '{self.key}' for {n} samples")
        return [self.condition if v is None else self._check(v, f"sample {i}") for i, v in enumerate(per_row)]

    def score_members(self, prompts: Sequence[Any], completions: Sequence[Any], *, progress: bool = False, **context: Any) -> Tensor:
        from .models import encode_single

        _check_lengths(prompts, completions)
        conditions = self.conditions(len(prompts), context)
        seqs = [encode_single(self.encoder, conditioned_prompt(c, p), y) for c, p, y in zip(conditions, prompts, completions, strict=True)]
        return self._run(seqs, progress, f"reward {self.name}")

    def score(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        return self.score_members(prompts, completions, progress=progress, **context)[:, 0]
