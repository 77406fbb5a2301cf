"""Pluralistic preferences: user groups with different gold rewards, one of them a minority.

The language is the sentiment task's. By default two groups: ``majority`` (80 %) likes positive reviews
(its reward is the sentiment task's gold reward ``s``) and ``minority`` (20 %) likes negative ones (``−s``).
Malformed text is bad for everyone (``−1 − malformed_penalty`` for every group). Each preference pair is
labelled by one group drawn by its share, with a Bradley–Terry draw on that group's reward; the row
records the group in ``group`` so group-aware methods can use it (it travels as metadata to the batch: ``batch["meta"]["group"]``).

``gold_reward`` is the share-weighted (utilitarian) mean of the group rewards; ``group_rewards`` gives
each group's, so evaluations can report the worst group (egalitarian view) as well.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Any

from ._labels import bt_probability
from .base import TASKS
from .sentiment import SentimentTask


@TASKS.register("pluralistic")
@dataclass
class PluralisticTask(SentimentTask):
    """``groups``: (name, share, sign) triples; a group's reward is ``sign · s`` for well-formed text."""

    minority_share: float = 0.2
    groups: tuple[tuple[str, float, float], ...] | None = None
    users_per_group: int = 8  # each pair is labelled by one user of its group (row field ``user``, e.g. ``minority-3``)
    name: str = field(default="pluralistic", init=False)
    label_salt = "pluralistic"
    reward_attributes = None
    reward_step_split = None

    @classmethod
    def from_config(cls, config: Any) -> "PluralisticTask":
        return cls(seed=config.seed, minority_share=getattr(config, "minority_share", 0.2))

    def __post_init__(self) -> None:
        if self.groups is None:
            if not 0.0 < self.minority_share < 1.0:
                raise ValueError(f"minority_share must be in (0, 1), got {self.minority_share}")
            self.groups = (("majority", 1.0 - self.minority_share, 1.0), ("minority", self.minority_share, -1.0))
        total = sum(share for _, share, _ in self.groups)
        if len(self.groups) < 2 or abs(total - 1.0) > 1e-6 or any(share <= 0 for _, share, _ in self.groups):
            raise ValueError(f"pluralistic groups need two or more positive shares summing to 1 (got {self.groups})")

    @property
    def group_names(self) -> list[str]:
        return [g for g, _, _ in self.groups]

    def group_rewards(self, prompt: str, completion: str) -> dict[str, float]:
        base = SentimentTask.gold_reward(self, prompt, completion)
        if self.parse(prompt, completion) is None:
            return {g: base for g, _, _ in self.groups}
        return {g: sign * base for g, _, sign in self.groups}

    def gold_reward(self, prompt: str, completion: str) -> float:
        r = self.group_rewards(prompt, completion)
        return sum(share * r[g] for g, share, _ in self.groups)

    def gold_rewards(self, prompts: list[str], completions: list[str], per_group: bool = False):
        """Share-weighted gold rewards (a list), or with ``per_group=True`` a dict group -> list."""
        if not per_group:
            return [self.gold_reward(p, c) for p, c in zip(prompts, completions, strict=True)]
        out: dict[str, list[float]] = {g: [] for g in self.group_names}
        for p, c in zip(prompts, completions, strict=True):
            for g, v in self.group_rewards(p, c).items():
                out[g].append(v)
        return out

    def draw_group(self, rng: random.Random) -> str:
        u, acc = rng.random(), 0.0
        for g, share, _ in self.groups:
            acc += share
            if u < acc:
                return g
        return self.groups[-1][0]

    def user_of(self, group: str, prompt: str, a: str, b: str) -> str:
        """The user of ``group`` who labels this pair: a hash of the pair (no draw from the label stream)."""
        return f"{group}-{zlib.crc32(f'{prompt}|{a}|{b}'.encode()) % self.users_per_group}"

    def pair_judge(self, temperature: float):
        """Each pair is labelled by a group drawn by its share (Bradley–Terry on that group's reward); the
        row records the group in ``group`` and the labelling user (one of ``users_per_group`` per group,
        who share the group's reward) in ``user``."""

        def judge(prompt: str, a: str, b: str, rng: random.Random):
            group = self.draw_group(rng)
            p_a = bt_probability(self.group_rewards(prompt, a)[group], self.group_rewards(prompt, b)[group], temperature)
            return p_a, {"group": group, "user": self.user_of(group, prompt, a, b)}

        return judge
