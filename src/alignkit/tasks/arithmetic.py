"""Verifiable arithmetic: prompts ``"12 + 7 ="``, reward 1 for the exact answer, else 0.

Difficulty levels set the operand range and the operators:

=====  ==============  ==========
level  operands         operators
=====  ==============  ==========
0      0 .. 4           +
1      0 .. 9           +
2      0 .. 19          +, -
3      0 .. 49          +, -
4      0 .. 999         +, -
=====  ==============  ==========

The SFT corpus is *noisy* on purpose (``sft_error_rate`` of its answers are off by one or two), so a
tiny model trained on it is a weak starting point whose accuracy online RL can raise. The gold reward is
exact match of the first number in the completion; a completion must end with ``" ."`` to count.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from .base import TASKS, TaskBase

LEVELS = {0: (4, "+"), 1: (9, "+"), 2: (19, "+-"), 3: (49, "+-"), 4: (999, "+-")}
_NUMBER = re.compile(r"^\s*(-?\d+)\s*\.\s*$")


@TASKS.register("arithmetic")
@dataclass
class ArithmeticTask(TaskBase):
    seed: int = 0
    level: int = 2
    sft_error_rate: float = 0.3
    name: str = field(default="arithmetic", init=False)
    label_salt = "arithmetic"

    @classmethod
    def from_config(cls, config: Any) -> "ArithmeticTask":
        return cls(seed=config.seed, level=config.level)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"arithmetic level must be one of {sorted(LEVELS)}, got {self.level}")

    def _problem(self, rng: random.Random) -> tuple[str, int]:
        top, ops = LEVELS[self.level]
        a, b, op = rng.randint(0, top), rng.randint(0, top), rng.choice(ops)
        return f"{a} {op} {b} =", a + b if op == "+" else a - b

    def prompts(self, n: int, split: str = "train") -> list[str]:
        rng = random.Random(f"{self.seed}-{split}-arith")
        return [self._problem(rng)[0] for _ in range(n)]

    def answer(self, prompt: str) -> int | None:
        m = re.match(r"^\s*(-?\d+)\s*([+-])\s*(-?\d+)\s*=\s*$", prompt)
        if not m:
            return None
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return a + b if op == "+" else a - b

    def sample_completion(self, prompt: str, rng: random.Random) -> str:
        answer = self.answer(prompt)
        if rng.random() < self.sft_error_rate:
            answer += rng.choice([-2, -1, 1, 2])
        return f" {answer} ."

    def sft_rows(self, n: int, split: str = "train") -> list[dict]:
        rng = random.Random(f"{self.seed}-{split}-arith-sft")
        return [{"prompt": p, "completion": self.sample_completion(p, rng)} for p in self.prompts(n, split)]

    def corpus(self, n: int = 2000) -> list[str]:
        return [r["prompt"] + r["completion"] for r in self.sft_rows(n, "tokenizer")]

    def parse(self, prompt: str, completion: str) -> int | None:
        m = _NUMBER.match(completion)
        return int(m.group(1)) if m else None

    def gold_reward(self, prompt: str, completion: str) -> float:
        """1.0 for the exact answer followed by " .", else 0.0."""
        value = self.parse(prompt, completion)
        return 1.0 if value is not None and value == self.answer(prompt) else 0.0

    def pair_judge(self, temperature: float):
        """Pairs where exactly one completion is correct (the correct one is chosen); others are left out."""

        def judge(prompt: str, a: str, b: str, rng: random.Random):
            ra, rb = self.gold_reward(prompt, a), self.gold_reward(prompt, b)
            return None if ra == rb else (1.0 if ra > rb else 0.0, {})

        return judge
