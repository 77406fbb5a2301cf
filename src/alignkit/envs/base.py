"""The environment interface of multi-turn rollouts, and the registry of environments.

An environment is one episode's world behind a small text interface (the shape of TRL's environments,
verl's agent loop and NeMo-RL's environments):

* :meth:`Environment.reset` ``(row) -> messages``: the first observation for one task row (a list of chat
  messages: the system and user turns the policy answers first);
* :meth:`Environment.step` ``(assistant_message) -> StepResult``: the policy's turn (its text) in, the
  environment's answer out: observation messages (``user`` or ``tool`` turns), this turn's reward,
  whether the episode is over, and optional text feedback (shown to the policy as a ``user`` turn after
  the observation);
* :meth:`Environment.metrics`: numbers of the finished episode (``success``, ``regret``, ...), averaged
  over episodes into the run's metrics as ``env/<name>``.

One environment object runs one episode (a fresh one is built per episode from its class and the recipe's
``rl.env.options``), so it may keep the episode's state in attributes. The number of turns is bounded by
``rl.env.max_turns`` (an environment may set a smaller :attr:`Environment.max_turns` of its own).

Rewards: every :class:`StepResult` carries the reward of its turn; a trajectory's reward is the sum of its
turns' rewards (``rl.env.reward: sum``) or the last turn's (``final``), and per-turn rewards can also be
credited at the end of their own turn (``rl.env.credit: turn``; ``docs/agents.md``).

Failures never crash a run: an exception raised by ``reset`` or ``step`` ends that episode, which is kept
with reward 0, marked (``Trajectory.error``, the exception's type and message) and counted
(``env/errors``); see :mod:`alignkit.envs.rollout`.

Environments register by name in :data:`ENVIRONMENTS` (``@ENVIRONMENTS.register("name")``), and a user's
class is named by ``module:Class`` or ``./file.py:Class`` (:func:`environment_class`, through
:func:`alignkit.core.user_code.load_object`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from ..core.registry import Registry
from ..core.user_code import is_code_spec, load_object

ENVIRONMENTS: Registry[type["Environment"]] = Registry("environment")

Message = dict[str, Any]


@dataclass
class StepResult:
    """What an environment answers to one assistant turn.

    ``observation``: messages appended to the conversation (``tool`` results, ``user`` turns; may be
    empty); ``reward``: this turn's reward; ``done``: the episode is over (the observation is then not
    shown); ``feedback``: optional text shown after the observation as a ``user`` turn; ``info``:
    anything the environment wants to keep with the trajectory (JSON-able)."""

    observation: list[Message] = field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    feedback: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def messages(self) -> list[Message]:
        """The observation followed by the feedback as a ``user`` turn."""
        out = list(self.observation)
        if self.feedback:
            out.append({"role": "user", "content": self.feedback})
        return out


class Environment:
    """The base of every environment. Subclasses implement :meth:`reset` and :meth:`step`; keyword
    arguments of ``__init__`` are the environment's options (``rl.env.options``).

    :attr:`tools`: names of the tools (:data:`alignkit.envs.tools.TOOLS`) whose JSON schemas the policy is
    shown (see :class:`~alignkit.envs.tools.ToolEnvironment`, which also runs the calls); ``rl.env.tools``
    replaces them. :attr:`max_turns`: the environment's own turn limit (None: ``rl.env.max_turns``)."""

    tools: tuple[str, ...] = ()
    max_turns: int | None = None

    def reset(self, row: dict[str, Any]) -> list[Message]:
        """The first observation (messages) for the task ``row`` (a data row: ``prompt`` and any extra fields)."""
        raise NotImplementedError

    def step(self, message: str) -> StepResult:
        """The environment's answer to the policy's turn ``message`` (its text, special tokens removed)."""
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        """Numbers of the finished episode, averaged over episodes as ``env/<name>`` (default: none)."""
        return {}

    def describe(self) -> list[dict[str, Any]]:
        """The JSON schemas of :attr:`tools` (the ``tools=`` list of ``apply_chat_template``)."""
        from .tools import tool_schemas

        return tool_schemas(self.tools)


def environment_class(spec: str) -> type[Environment]:
    """The environment class ``spec`` names: a registered name, or ``module:Class`` / ``./file.py:Class``
    (loaded with :func:`~alignkit.core.user_code.load_object`). Unknown names list the registered ones; a
    loaded object must be a class with ``reset`` and ``step``."""
    from . import builtin  # noqa: F401  (registers the built-in environments)

    if is_code_spec(spec):
        cls = load_object(spec, "environment")
        if not inspect.isclass(cls) or not all(callable(getattr(cls, m, None)) for m in ("reset", "step")):
            raise ValueError(f"environment '{spec}': expected a class with reset(row) and step(message) methods, got {cls!r}")
        return cls
    if spec not in ENVIRONMENTS:
        raise ValueError(ENVIRONMENTS.unknown(spec) + " (or a module:Class / ./file.py:Class of your own)")
    return ENVIRONMENTS.get(spec)


def check_options(cls: type, options: dict[str, Any], label: str = "rl.env.options") -> None:
    """Refuse options that ``cls.__init__`` does not take (naming them and the accepted ones)."""
    sig = inspect.signature(cls.__init__)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [n for n in sig.parameters if n != "self"]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ValueError(f"{label}: environment {cls.__name__} takes no option(s) {', '.join(map(repr, unknown))}; "
                         f"accepted: {', '.join(accepted) or '(none)'}")


__all__ = ["ENVIRONMENTS", "Environment", "Message", "StepResult", "check_options", "environment_class"]
