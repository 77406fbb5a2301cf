"""Verifiable reward functions, for use through an explicit path, e.g.
``alignkit.rewards.verifiable:exact_match``.

Every function is batched: ``fn(prompts, completions, **kwargs) -> list[float]`` (one value per
completion). Per-example inputs (``answers``) are lists of the same length as ``completions``.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _norm(text: str) -> str:
    return " ".join(str(text).strip().lower().split())


def exact_match(prompts: list, completions: list[str], answers: list[str], normalise: bool = True) -> list[float]:
    """1 when the completion equals the answer (case/whitespace-insensitive by default), else 0."""
    f = _norm if normalise else (lambda s: s)
    return [float(f(c) == f(a)) for c, a in zip(completions, answers, strict=True)]


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_answer(prompts: list, completions: list[str], answers: list, tol: float = 1e-6) -> list[float]:
    """1 when the completion's last number equals the answer within ``tol`` (absolute), else 0."""
    out = []
    for c, a in zip(completions, answers, strict=True):
        got, want = last_number(c), float(a) if not isinstance(a, str) else last_number(a)
        out.append(float(got is not None and want is not None and abs(got - want) <= tol))
    return out


def format_match(prompts: list, completions: list[str], pattern: str, full: bool = True) -> list[float]:
    """1 when the completion matches the regular expression ``pattern`` (whole text when ``full``)."""
    rx = re.compile(pattern, re.DOTALL)
    match = rx.fullmatch if full else rx.search
    return [float(match(c.strip()) is not None) for c in completions]


def length(prompts: list, completions: list[str], target: int | None = None, unit: str = "words") -> list[float]:
    """``−|len − target|`` (or ``−len`` without a target), in words or characters."""
    out = []
    for c in completions:
        n = len(c.split()) if unit == "words" else len(c)
        out.append(-float(abs(n - target) if target is not None else n))
    return out
