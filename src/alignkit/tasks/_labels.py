"""Shared helpers for preference labels: Bradley–Terry draws and label-flip noise (deterministic by seed)."""

from __future__ import annotations

import math
import random


def bt_probability(r_a: float, r_b: float, temperature: float) -> float:
    """P(a ≻ b) = σ((r_a − r_b) / temperature), computed without overflow."""
    z = (r_a - r_b) / temperature
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def flip_labels(rows: list[dict], rate: float, seed: int | str) -> list[dict]:
    """Swap ``chosen``/``rejected`` of each row independently with probability ``rate`` (label noise).

    Returns new row dicts (the input is not changed); the draws depend only on ``seed`` and the row
    order, so the same rows flip at every call."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {rate}")
    if rate == 0.0:
        return [dict(r) for r in rows]
    rng = random.Random(f"{seed}-label-noise")
    out = []
    for row in rows:
        row = dict(row)
        if rng.random() < rate:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        out.append(row)
    return out
