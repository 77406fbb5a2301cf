"""Reward sources, reward models, transforms and reward-model evaluation.

``build_reward_source(spec).score(prompts, completions) -> Tensor`` is the one interface every reward
(trained model, multi-objective or process model, preference model, Python function, ensemble, combination, task gold reward) offers.
"""

from __future__ import annotations

from .sources import (
    CombinedSource,
    EnsembleSource,
    FunctionSource,
    MultiObjectiveRewardSource,
    PreferenceModelSource,
    ProcessRewardSource,
    RewardFunctionError,
    RewardModelSource,
    RewardSource,
    TaskGoldSource,
    build_reward_source,
    check_reward_spec,
    load_function,
)

__all__ = [
    "RewardSource",
    "RewardFunctionError",
    "check_reward_spec",
    "RewardModelSource",
    "PreferenceModelSource",
    "MultiObjectiveRewardSource",
    "ProcessRewardSource",
    "FunctionSource",
    "TaskGoldSource",
    "EnsembleSource",
    "CombinedSource",
    "build_reward_source",
    "load_function",
]
