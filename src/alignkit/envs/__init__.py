"""Multi-turn environments for RL over whole trajectories (``docs/agents.md``).

``base`` — the :class:`Environment` interface (``reset(row) -> messages``, ``step(message) ->
StepResult``), the :data:`ENVIRONMENTS` registry and :func:`environment_class` (a registered name or a
user's ``module:Class``); ``tools`` — tool calls in the ``transformers`` convention (:data:`TOOLS`, the
``calc`` calculator, :func:`parse_tool_calls`, :class:`ToolEnvironment`); ``rollout`` — batched multi-turn
rollouts over any rollout engine with environment tokens masked (:func:`run_episodes`, :class:`Trajectory`);
``builtin`` — ``calculator``, ``guess_number``, ``self_correction``; ``demos`` — SFT demonstrations of them.
"""

from .base import ENVIRONMENTS, Environment, StepResult, check_options, environment_class
from .builtin import CalculatorEnv, GuessNumberEnv, SelfCorrectionEnv
from .rollout import Limits, Renderer, Trajectory, episode_stats, run_episodes, turn_seed
from .tools import TOOLS, Tool, ToolCall, ToolEnvironment, calculate, parse_tool_calls, register_tool, tool_schemas

__all__ = [
    "ENVIRONMENTS", "TOOLS", "CalculatorEnv", "Environment", "GuessNumberEnv", "Limits", "Renderer", "SelfCorrectionEnv", "StepResult",
    "Tool", "ToolCall", "ToolEnvironment", "Trajectory", "calculate", "check_options", "environment_class", "episode_stats", "parse_tool_calls",
    "register_tool", "run_episodes", "tool_schemas", "turn_seed",
]
