"""What every built-in task offers (:class:`Task`), a base with the shared parts (:class:`TaskBase`), the one
pair-labelling helper (:func:`label_pairs`) and the task registry (:data:`TASKS`).

A task is deterministic given its seed. Its interface:

* ``prompts(n, split)``, ``sample_completion(prompt, rng)`` (the base distribution), ``sft_rows(n, split)``,
  ``corpus(n)`` (text to train a tokenizer on);
* ``gold_reward(prompt, completion)`` / ``gold_rewards(prompts, completions)`` (the known reward);
* ``label_pairs(prompts, completions_a, completions_b, temperature, seed, label_noise)``: preference
  rows drawn by :func:`label_pairs` with the task's ``pair_judge``;
* optional: ``preference(prompt, a, b)`` (an oracle P(a ≻ b), for tasks whose preferences no scalar
  reward explains);
* the defaults the reward algorithm needs: ``reward_attributes`` (multi-objective attribute names) and
  ``reward_step_split`` (the regex that cuts a completion into steps for process rewards); None where the
  task has no default (then the recipe must say).
"""

from __future__ import annotations

import random
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

from ..core.registry import Registry
from ._labels import bt_probability, flip_labels

# judge(prompt, a, b, rng) -> None (leave the pair out) or (P(a ≻ b), extra fields of the row)
Judge = Callable[[str, str, str, random.Random], "tuple[float, dict[str, Any]] | None"]


def label_pairs(prompts, completions_a, completions_b, judge: Judge, *, seed: int | str, salt: str, label_noise: float = 0.0) -> list[dict]:
    """Preference rows ``{"prompt", "chosen", "rejected", **extra}``: for each pair with different
    completions, ``judge`` gives P(a ≻ b) (and extra fields, e.g. the labelling group), one uniform draw
    from ``random.Random(f"{seed}-{salt}-labels")`` picks the winner, then each label is flipped with
    probability ``label_noise`` (:func:`flip_labels`, seeded by ``f"{seed}-{salt}"``). Pairs with
    identical completions, or that ``judge`` leaves out (returns None), carry no preference and are
    dropped; the caller sees how many were kept from the length of the result."""
    rng = random.Random(f"{seed}-{salt}-labels")
    rows = []
    for prompt, a, b in zip(prompts, completions_a, completions_b, strict=True):
        if a == b:
            continue
        judged = judge(prompt, a, b, rng)
        if judged is None:
            continue
        p_a, extra = judged
        chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra})
    return flip_labels(rows, label_noise, f"{seed}-{salt}")


def bradley_terry(reward: Callable[[str, str], float], temperature: float) -> Judge:
    """A judge drawing P(a ≻ b) = σ((r(a) − r(b)) / temperature) on ``reward(prompt, completion)``."""

    def judge(prompt: str, a: str, b: str, rng: random.Random):
        return bt_probability(reward(prompt, a), reward(prompt, b), temperature), {}

    return judge


@runtime_checkable
class Task(Protocol):
    name: str
    seed: int
    reward_attributes: tuple[str, ...] | None
    reward_step_split: str | None

    def prompts(self, n: int, split: str = "train") -> list[str]: ...
    def sample_completion(self, prompt: str, rng: random.Random) -> str: ...
    def sft_rows(self, n: int, split: str = "train") -> list[dict]: ...
    def corpus(self, n: int = 2000) -> list[str]: ...
    def gold_reward(self, prompt: str, completion: str) -> float: ...
    def gold_rewards(self, prompts: list[str], completions: list[str]) -> list[float]: ...
    def label_pairs(self, prompts, completions_a, completions_b, temperature: float = 0.25, seed: int | None = None,
                    label_noise: float = 0.0) -> list[dict]: ...


class TaskBase:
    """Shared parts of the built-in tasks (plain class attributes, so dataclass tasks keep their fields).

    Subclasses set ``label_salt`` (the name of their label stream) and may override :meth:`pair_judge`
    (default: Bradley–Terry on :meth:`gold_reward`)."""

    label_salt: ClassVar[str] = "bt"
    reward_attributes: ClassVar[tuple[str, ...] | None] = None
    reward_step_split: ClassVar[str | None] = None
    seed: int = 0

    @classmethod
    def from_config(cls, config: Any) -> "TaskBase":
        """The task from a :class:`alignkit.config.TaskConfig` (the seed; subclasses read their own fields)."""
        return cls(seed=config.seed)  # type: ignore[call-arg]

    def gold_reward(self, prompt: str, completion: str) -> float:
        raise NotImplementedError

    def gold_rewards(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [self.gold_reward(p, c) for p, c in zip(prompts, completions, strict=True)]

    def pair_judge(self, temperature: float) -> Judge:
        return bradley_terry(self.gold_reward, temperature)

    def label_pairs(self, prompts, completions_a, completions_b, temperature: float = 0.25, seed: int | None = None,
                    label_noise: float = 0.0) -> list[dict]:
        """Preference pairs drawn by :func:`label_pairs` with :meth:`pair_judge` (Bradley–Terry on the gold
        reward unless the task says otherwise), then flipped with probability ``label_noise``."""
        return label_pairs(prompts, completions_a, completions_b, self.pair_judge(temperature),
                           seed=self.seed if seed is None else seed, salt=self.label_salt, label_noise=label_noise)


TASKS: Registry[type] = Registry("task")
