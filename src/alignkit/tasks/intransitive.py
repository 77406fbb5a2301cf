"""Intransitive preferences: rock-paper-scissors over three styles of review (no consistent scalar reward).

The language is the sentiment task's. A well-formed completion has one of three *styles*:

* ``single`` — one clause;
* ``and`` — two or more clauses, all joined by "and";
* ``but`` — two or more clauses with at least one "but".

The oracle prefers ``single ≻ and ≻ but ≻ single`` with probability ``0.5 + margin`` (default margin 0.3,
so 0.8); two completions of the same style tie (0.5); a malformed completion loses to a well-formed one
with probability ``malformed_loss`` (0.95) and ties with another malformed one. ``preference(prompt, a, b)``
returns P(a ≻ b); it is antisymmetric, P(a ≻ b) + P(b ≻ a) = 1, and has a cycle, so no scalar reward
r with P(a ≻ b) = σ(r(a) − r(b)) exists.

For interfaces that need a scalar (``gold_reward``, reward-vs-KL plots) the task reports the expected
win rate of a completion against the *base* distribution's samples (its Borda score against the SFT
policy), which is well defined but not a reward that explains the preferences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import TASKS
from .sentiment import SentimentTask

STYLES = ("single", "and", "but")
BEATS = {"single": "and", "and": "but", "but": "single"}  # key beats value


@TASKS.register("intransitive")
@dataclass
class IntransitiveTask(SentimentTask):
    margin: float = 0.3
    malformed_loss: float = 0.95
    name: str = field(default="intransitive", init=False)
    label_salt = "intransitive"
    reward_attributes = None
    reward_step_split = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 0.5:
            raise ValueError(f"intransitive margin must be in [0, 0.5], got {self.margin}")

    def style(self, prompt: str, completion: str) -> str | None:
        """``single``, ``and``, ``but``, or None for malformed text."""
        adjectives = self.parse(prompt, completion)
        if adjectives is None:
            return None
        if len(adjectives) == 1:
            return "single"
        return "but" if " but " in f" {completion.strip()} " else "and"

    def style_preference(self, sa: str | None, sb: str | None) -> float:
        if sa is None or sb is None:
            if sa is None and sb is None:
                return 0.5
            return 1.0 - self.malformed_loss if sa is None else self.malformed_loss
        if sa == sb:
            return 0.5
        return 0.5 + self.margin if BEATS[sa] == sb else 0.5 - self.margin

    def preference(self, prompt: str, a: str, b: str) -> float:
        """P(a ≻ b) under the oracle."""
        return self.style_preference(self.style(prompt, a), self.style(prompt, b))

    def preferences(self, prompts: list[str], completions_a: list[str], completions_b: list[str]) -> list[float]:
        return [self.preference(p, a, b) for p, a, b in zip(prompts, completions_a, completions_b, strict=True)]

    def base_style_distribution(self) -> dict[str, float]:
        """P(style) under the base (SFT) distribution: clauses uniform in 1..max_clauses, connectors uniform."""
        n = self.max_clauses
        probs = {"single": 1.0 / n, "and": 0.0, "but": 0.0}
        for k in range(2, n + 1):
            all_and = 0.5 ** (k - 1)
            probs["and"] += all_and / n
            probs["but"] += (1.0 - all_and) / n
        return probs

    def gold_reward(self, prompt: str, completion: str) -> float:
        """Expected P(completion ≻ y) for y from the base distribution (a Borda score, in [0, 1])."""
        s = self.style(prompt, completion)
        return sum(p * self.style_preference(s, t) for t, p in self.base_style_distribution().items())

    def pair_judge(self, temperature: float):
        """Pairs labelled by a draw from the oracle's P(a ≻ b) (``temperature`` is not used)."""
        return lambda prompt, a, b, rng: (self.preference(prompt, a, b), {})
