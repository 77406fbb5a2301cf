"""Built-in environments that teach something on CPU, each with a demonstration policy for the SFT stage
that gives a tiny model the format (:meth:`demonstration`; ``python -m alignkit.envs.demos``).

* ``calculator`` — arithmetic with the ``calc`` tool: the policy may call the calculator before it
  answers; reward 1 for the exact answer in the arithmetic task's format (``" 85 ."``). Metrics:
  ``success``, ``tool_calls``, ``invalid_calls``.
* ``guess_number`` — a game with feedback: find a secret integer in ``[low, high]``; after each wrong
  guess the environment says ``higher`` or ``lower``. Reward 1 on the turn that finds it, ``-step_penalty``
  for every wrong guess; at most ``max_guesses`` turns. Metrics: ``success``, ``regret`` (turns spent on
  wrong guesses, and all ``max_guesses`` when the number is not found: the cumulative regret against always
  guessing right, as EVOLvE measures agents in bandits), ``invalid`` (turns without a number in range).
* ``self_correction`` — two turns with a verifier (SCoRe's setting): the policy answers, the environment
  says ``check your answer .``, the policy answers again. Turn rewards ``first_turn_weight * r1`` and
  ``r2 + progress_bonus * (r2 - r1)`` (``r`` = 1 for a correct answer): by default (weight 0, no bonus) the
  reward is ``r2`` (SCoRe stage I, with ``rl.env.first_turn_kl`` holding turn 1 near the base); with
  ``first_turn_weight: 1`` and a bonus ``alpha`` the sum is SCoRe stage II's ``r1 + r2 + alpha (r2 - r1)``. Metrics:
  ``success`` (the final answer is right: ``turn2_correct``), ``turn1_correct``, ``turn2_correct``, ``delta`` (``r2 - r1``), ``fixed`` (wrong then right), ``broken``
  (right then wrong).
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from .base import ENVIRONMENTS, Environment, Message, StepResult
from .tools import ToolEnvironment, as_tool_call, calculate, format_number

_ANSWER = re.compile(r"^\s*(-?\d+)\s*\.\s*$")
_FIRST_INT = re.compile(r"-?\d+")


def parse_answer(text: str) -> int | None:
    """The number of an answer in the arithmetic task's format (``" 85 ."``), else None."""
    m = _ANSWER.match(text)
    return int(m.group(1)) if m else None


def expected_answer(row: dict[str, Any]) -> int | float:
    """``row["answer"]`` when given, else the value of its prompt (``"37 + 48 ="``) by the calculator."""
    if row.get("answer") is not None:
        return row["answer"]
    return calculate(str(row["prompt"]))


def _noisy(answer: int | float, rng: random.Random, error_rate: float) -> int:
    value = int(answer)
    return value + rng.choice([-2, -1, 1, 2]) if rng.random() < error_rate else value


def _say(number: int | float) -> str:
    return f" {format_number(number)} ."


@ENVIRONMENTS.register("calculator")
class CalculatorEnv(ToolEnvironment):
    """Arithmetic with a calculator tool (``calc``); see the module docstring."""

    tools = ("calc",)

    def __init__(self, tools: list[str] | None = None):
        super().__init__(tools)
        self.correct = 0.0

    def reset(self, row: dict[str, Any]) -> list[Message]:
        self.answer_value = expected_answer(row)
        return [{"role": "user", "content": str(row["prompt"])}]

    def answer(self, message: str) -> StepResult:
        value = parse_answer(message)
        self.correct = float(value is not None and value == self.answer_value)
        return StepResult(reward=self.correct, done=True)

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "success": self.correct}

    @staticmethod
    def demonstration(row: dict[str, Any], rng: random.Random, tool_share: float = 0.5, error_rate: float = 0.3) -> list[Message]:
        """With probability ``tool_share`` a calculator call and the exact answer, else an answer from the head
        that is off by 1 or 2 with probability ``error_rate``. After a call the answer is the tool's result
        as written (``"85 ."``, no leading space, which the answer format allows): the same tokens as the
        ``tool`` message's content, so a tiny model has to copy tokens, not map ``"85"`` to ``" 85"``."""
        prompt = str(row["prompt"])
        answer = expected_answer(row)
        if rng.random() < tool_share:
            expression = prompt.rstrip().rstrip("=").strip()
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": "", "tool_calls": [as_tool_call("calc", {"expr": expression})]},
                    {"role": "tool", "name": "calc", "content": format_number(answer)}, {"role": "assistant", "content": f"{format_number(answer)} ."}]
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _say(_noisy(answer, rng, error_rate))}]


@ENVIRONMENTS.register("guess_number")
class GuessNumberEnv(Environment):
    """Find the secret number with higher / lower feedback; see the module docstring."""

    def __init__(self, low: int = 0, high: int = 15, step_penalty: float = 0.0, seed: int = 0, max_guesses: int = 6):
        if high <= low:
            raise ValueError(f"guess_number: high ({high}) must be above low ({low})")
        self.low, self.high, self.step_penalty, self.seed = low, high, step_penalty, seed
        self.max_turns = max_guesses  # the episode's turn limit (rl.env.max_turns may cut it shorter)
        self.wrong = self.invalid = 0
        self.found = False

    def secret_for(self, row: dict[str, Any]) -> int:
        if row.get("secret") is not None:
            return int(row["secret"])
        digest = hashlib.sha256(f"{self.seed}|{row.get('prompt')}".encode()).digest()
        return self.low + int.from_bytes(digest[:8], "big") % (self.high - self.low + 1)

    def question(self) -> str:
        return f"guess a number from {self.low} to {self.high} ."

    def reset(self, row: dict[str, Any]) -> list[Message]:
        self.secret = self.secret_for(row)
        return [{"role": "user", "content": self.question()}]

    def step(self, message: str) -> StepResult:
        m = _FIRST_INT.search(message)
        guess = int(m.group(0)) if m else None
        if guess is None or not self.low <= guess <= self.high:
            self.invalid += 1
            self.wrong += 1
            return StepResult(reward=-self.step_penalty, feedback=f" say a number from {self.low} to {self.high} .")
        if guess == self.secret:
            self.found = True
            return StepResult(reward=1.0, done=True)
        self.wrong += 1
        return StepResult(reward=-self.step_penalty, feedback=" higher ." if self.secret > guess else " lower .")

    def metrics(self) -> dict[str, float]:
        """``regret``: the wrong guesses of a game that found the number, ``max_guesses`` for one that did not
        (however it ended: out of turns, or cut short by a length limit), so quitting early never lowers it."""
        regret = self.wrong if self.found else self.max_turns
        return {"success": float(self.found), "regret": float(regret), "invalid": float(self.invalid)}

    @staticmethod
    def demonstration(row: dict[str, Any], rng: random.Random, low: int = 0, high: int = 15, seed: int = 0, max_turns: int = 6,
                      noise: float = 0.2) -> list[Message]:
        """A player who guesses uniformly among the numbers the feedback still allows (any number in the
        range with probability ``noise``), until it finds the secret or runs out of turns."""
        env = GuessNumberEnv(low, high, seed=seed)
        messages = env.reset(row)
        lo, hi = low, high
        for _ in range(max_turns):
            guess = rng.randint(low, high) if rng.random() < noise else rng.randint(lo, hi)
            messages.append({"role": "assistant", "content": f" {guess} ."})
            result = env.step(f" {guess} .")
            if result.done:
                break
            if guess < env.secret:
                lo = max(lo, guess + 1)
            else:
                hi = min(hi, guess - 1)
            messages.extend(result.messages())
        if messages[-1]["role"] != "assistant":
            messages.pop()
        return messages


@ENVIRONMENTS.register("self_correction")
class SelfCorrectionEnv(Environment):
    """Answer, hear ``check your answer .``, answer again; a verifier grades both; see the module docstring."""

    max_turns = 2
    prompt_again = " check your answer ."

    def __init__(self, first_turn_weight: float = 0.0, progress_bonus: float = 0.0):
        self.first_turn_weight, self.progress_bonus = first_turn_weight, progress_bonus
        self.correct: list[float] = []

    def reset(self, row: dict[str, Any]) -> list[Message]:
        self.answer_value = expected_answer(row)
        return [{"role": "user", "content": str(row["prompt"])}]

    def step(self, message: str) -> StepResult:
        value = parse_answer(message)
        r = float(value is not None and value == self.answer_value)
        self.correct.append(r)
        if len(self.correct) == 1:
            return StepResult(reward=self.first_turn_weight * r, feedback=self.prompt_again)
        r1 = self.correct[0]
        return StepResult(reward=r + self.progress_bonus * (r - r1), done=True)

    def metrics(self) -> dict[str, float]:
        r1 = self.correct[0] if self.correct else 0.0
        r2 = self.correct[1] if len(self.correct) > 1 else 0.0
        return {"success": r2, "turn1_correct": r1, "turn2_correct": r2, "delta": r2 - r1, "fixed": float(r1 == 0 and r2 == 1),
                "broken": float(r1 == 1 and r2 == 0)}

    @staticmethod
    def demonstration(row: dict[str, Any], rng: random.Random, error_rate: float = 0.3, keep: float = 0.5) -> list[Message]:
        """A noisy first answer, then the same answer again with probability ``keep``, else a fresh noisy one
        (so the second turn is no better than the first: what self-correction training has to change)."""
        answer = expected_answer(row)
        first = _noisy(answer, rng, error_rate)
        second = first if rng.random() < keep else _noisy(answer, rng, error_rate)
        return [{"role": "user", "content": str(row["prompt"])}, {"role": "assistant", "content": _say(first)},
                {"role": "user", "content": SelfCorrectionEnv.prompt_again}, {"role": "assistant", "content": _say(second)}]


__all__ = ["CalculatorEnv", "GuessNumberEnv", "SelfCorrectionEnv", "expected_answer", "parse_answer"]
