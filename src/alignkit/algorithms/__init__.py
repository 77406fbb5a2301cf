"""Algorithms: each is a short composition of a data kind, a signal and an objective on the shared engine."""

from __future__ import annotations

from ..config import Recipe
from .base import Algorithm
from .dpo import DPO
from .online import OnlineRL
from .reward import RewardModelling
from .sft import SFT

ALGORITHMS: dict[str, type[Algorithm]] = {"sft": SFT, "dpo": DPO, "reward": RewardModelling, "rl": OnlineRL}


def build_algorithm(recipe: Recipe) -> Algorithm:
    if recipe.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{recipe.algorithm}'; allowed: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[recipe.algorithm](recipe)


def train(recipe: Recipe):
    """Run a recipe end to end; returns the folder of the final model."""
    from ..engine.trainer import Trainer

    return Trainer(recipe, build_algorithm(recipe)).train()
