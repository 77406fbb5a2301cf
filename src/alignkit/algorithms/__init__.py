"""Algorithms: each is a short composition of a data kind, a signal and an objective on the shared engine."""

from __future__ import annotations

from ..config import Recipe
from ..engine.contract import Algorithm
from .dpo import DPO
from .listwise import Listwise
from .reward import RewardModelling
from .rl import OnlineRL
from .sft import SFT
from .unpaired import Unpaired

ALGORITHMS: dict[str, type[Algorithm]] = {"sft": SFT, "dpo": DPO, "kto": Unpaired, "pro": Listwise, "reward": RewardModelling, "rl": OnlineRL}


def build_algorithm(recipe: Recipe) -> Algorithm:
    if recipe.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{recipe.algorithm}'; allowed: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[recipe.algorithm](recipe)


def train(recipe: Recipe):
    """Run a recipe end to end; returns the folder of the final model."""
    from ..engine.trainer import Trainer

    return Trainer(recipe, build_algorithm(recipe)).train()
