"""Rollouts of whole multi-turn trajectories over any :class:`~alignkit.rollout.engine.RolloutEngine`.

One call of :func:`run_episodes` plays one episode per row (a fresh environment each), turn by turn:

1. ``env.reset(row)`` gives the first messages; they are rendered with the tokenizer's chat template and
   its generation prompt (tools as ``tools=`` when the template renders them, else their schemas in the
   system message: :class:`Renderer`). These are the trajectory's prompt tokens.
2. Every turn, **all active episodes generate their next turn in one** ``engine.generate`` call, from
   their whole token sequence so far. The sampled tokens are appended as they are (never re-tokenized):
   they are the policy's actions, ``completion_mask`` 1.
3. The turn's text (special tokens removed) goes to ``env.step``; unless the episode is over, the
   observation (tool results, user turns, feedback) is rendered as the tokens the chat template puts
   between the end of the assistant's turn and the next generation prompt, and appended with
   ``completion_mask`` 0: environment tokens are out of the policy loss, and GAE passes over them
   (``docs/conventions.md``, masked tokens).

**Random streams.** Episode ``e``'s turn ``k`` is sampled with the job id of ``e`` (its global index,
the same on every process) and the seed :func:`turn_seed` ``(seed, k)``, so a token's draw depends only
on (seed, job id, turn, decode step): a rollout is reproducible, and 2 processes draw what 1 draws.

**Limits.** ``max_turns`` assistant turns (or the environment's own smaller :attr:`Environment.max_turns`);
``max_tokens`` for the whole trajectory (prompt, turns and environment tokens). A turn may use at most
``min(max_new_tokens, max_tokens - tokens so far)`` tokens. Policy, like DAPO's overlong handling: a turn
cut by the limit is still given to the environment (it may grade it) and ends the episode; an observation
that would not leave room for one more token ends the episode without being appended. Both mark the
trajectory ``truncated`` (``finished`` False, so ``rl.dapo.overlong: filter`` drops it).

**Failures.** An exception from ``reset``, ``step`` or ``metrics`` ends that episode only: it is kept
with reward 0, ``error`` set to the exception's type and message, and counted (``env/errors``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..data.encode import Encoder
from ..rollout.engine import RolloutEngine, Sampling, stop_token_ids
from .base import Environment, Message, StepResult
from .tools import tool_schemas

REWARD_MODES = ("sum", "final")


@dataclass
class Limits:
    """How long an episode may run and what its reward is (``rl.env``)."""

    max_turns: int = 4
    max_tokens: int = 256
    reward: str = "sum"  # sum of every turn's reward, or the last turn's ("final")
    tools: Sequence[str] | None = None  # replaces the environment's own tools (described and run; [] : none)
    describe_tools: bool = True  # show the tools' JSON schemas to the policy
    truncated_reward: float | None = None  # the reward of a truncated trajectory (None: what its turns earned)

    def __post_init__(self):
        if self.reward not in REWARD_MODES:
            raise ValueError(f"reward: got {self.reward!r}; allowed: {', '.join(REWARD_MODES)}")
        if self.max_turns < 1 or self.max_tokens < 2:
            raise ValueError("max_turns must be >= 1 and max_tokens >= 2")
        if self.tools is not None:
            from .tools import TOOLS

            for name in self.tools:
                if name not in TOOLS:
                    raise ValueError("rl.env.tools: " + TOOLS.unknown(name))


@dataclass
class Trajectory:
    """One episode as the trainer sees it: a prompt and one long "completion" holding every assistant turn
    and the environment tokens between them (``completion_mask`` 0 on those).

    ``completion_ids`` / ``completion_mask`` (same length): the tokens after the prompt, 1 where the policy
    chose the token; ``turn_ends``: index in ``completion_ids`` of each assistant turn's last token;
    ``turn_rewards``: each turn's reward; ``reward``: the trajectory's (sum or final; 0 after an error);
    ``finished``: not ``truncated``; ``error``: the environment's exception, if any; ``metrics``: the
    episode's numbers (``turns``, the environment's own such as ``tool_calls``, ``success``, ``regret``);
    ``messages``: the conversation as text. Has the fields of a :class:`~alignkit.rollout.engine.Sample`."""

    prompt: Any
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    completion_mask: list[int] = field(default_factory=list)
    completion: str = ""
    messages: list[Message] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    reward: float = 0.0
    truncated: bool = False
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    logprobs: list[float] | None = None  # per completion token: the sampler's log-prob on policy tokens, 0.0 on environment tokens

    @property
    def finished(self) -> bool:
        return not self.truncated

    @property
    def turns(self) -> int:
        return len(self.turn_ends)

    def token_turns(self) -> list[int]:
        """Per completion token: the index of the assistant turn it belongs to, -1 for environment tokens."""
        out, turn = [], 0
        for i, m in enumerate(self.completion_mask):
            out.append(turn if m else -1)
            if turn < len(self.turn_ends) and i == self.turn_ends[turn]:
                turn += 1
        return out

    def token_rewards(self) -> list[float]:
        """Per completion token: each turn's reward on that turn's last token, 0 elsewhere."""
        out = [0.0] * len(self.completion_ids)
        if self.error is None:
            for end, r in zip(self.turn_ends, self.turn_rewards):
                out[end] += r
        return out


def turn_seed(seed: int | None, turn: int) -> int | None:
    """The sampling seed of turn ``turn`` (0-based; turn 0 keeps ``seed``): distinct streams per turn."""
    if seed is None or turn == 0:
        return seed
    return (seed * 1_000_003 + turn * 7_919) % (1 << 62)


class Renderer:
    """Chat-template rendering of a conversation into token ids, with the tools shown as the template does
    (``tools=``) or, when it does not render them, as their schemas in the system message."""

    def __init__(self, tokenizer, tools: list[dict[str, Any]] | None):
        self.encoder = Encoder(tokenizer, max_length=10**9)
        self.tools = tools or None
        self.stops = set(stop_token_ids(tokenizer))

    def prompt(self, messages: list[Message]) -> list[int]:
        return self.encoder._render(messages, generation_prompt=True, tools=self.tools)

    def between(self, history: list[Message], observation: list[Message]) -> list[int]:
        """The tokens the template puts after ``history``'s last assistant turn's end-of-turn token (what
        the policy's sampling stopped on) up to the next generation prompt, with ``observation`` between."""
        before = self.encoder._render(history, generation_prompt=False, tools=self.tools)
        after = self.encoder._render(history + observation, generation_prompt=True, tools=self.tools)
        cut = next((i + 1 for i in range(len(before) - 1, -1, -1) if before[i] in self.stops), len(before))
        if after[:cut] != before[:cut]:
            raise ValueError("the chat template's rendering of a conversation with the environment's turn added does not start with its "
                             "rendering of the conversation before it (not prefix-consistent across turns); multi-turn rollouts need a template that is")
        return after[cut:]


class _Episode:
    def __init__(self, index: int, env: Environment | None, trajectory: Trajectory):
        self.index, self.env, self.t = index, env, trajectory
        self.done = env is None
        if trajectory.logprobs is None and not trajectory.completion_ids:
            trajectory.logprobs = []  # filled turn by turn (see append)

    @property
    def length(self) -> int:
        return len(self.t.prompt_ids) + len(self.t.completion_ids)

    def append(self, ids: list[int], policy: bool, logprobs: list[float] | None = None) -> None:
        self.t.completion_ids.extend(ids)
        self.t.completion_mask.extend([1 if policy else 0] * len(ids))
        # the sampler's log-probs of the policy's tokens, 0.0 on environment tokens; None once a turn had none (hf)
        if self.t.logprobs is not None:
            self.t.logprobs = None if policy and logprobs is None else self.t.logprobs + (list(logprobs) if policy else [0.0] * len(ids))

    def fail(self, error: BaseException) -> None:
        self.t.error = f"{type(error).__name__}: {error}"
        self.done = True


def run_episodes(
    engine: RolloutEngine,
    make_env: Callable[[], Environment],
    rows: Sequence[dict[str, Any]],
    job_ids: Sequence[int],
    sampling: Sampling,
    limits: Limits,
    batch_size: int = 64,
) -> list[Trajectory]:
    """One trajectory per row of ``rows`` (row ``i``'s episode samples with job id ``job_ids[i]``), sampled
    by ``engine`` with ``sampling`` (its ``max_new_tokens`` bounds one turn, its ``seed`` names the streams)
    within ``limits``; see the module docstring. ``make_env()`` builds one episode's environment."""
    if len(job_ids) != len(rows):
        raise ValueError(f"run_episodes: {len(job_ids)} job ids for {len(rows)} rows")
    tokenizer = engine.tokenizer
    renderers: dict[tuple, Renderer] = {}
    episodes = [_start(i, row, make_env, limits, tokenizer, renderers) for i, row in enumerate(rows)]
    turn = 0
    while True:
        active = [e for e in episodes if not e.done and e.t.turns < _turn_limit(e.env, limits)]
        for e in episodes:
            if not e.done and e not in active:
                e.done = True  # out of turns
        budgets = {e.index: min(sampling.max_new_tokens, limits.max_tokens - e.length) for e in active}
        for e in active:
            if budgets[e.index] < 1:
                e.t.truncated, e.done = True, True
        active = [e for e in active if not e.done]
        if not active:
            break
        call = sampling.with_(seed=turn_seed(sampling.seed, turn), max_new_tokens=max(budgets[e.index] for e in active))
        samples = engine.generate(prompt_ids=[e.t.prompt_ids + e.t.completion_ids for e in active], n=1,
                                  job_ids=[job_ids[e.index] for e in active], sampling=call, batch_size=batch_size)
        for e, s in zip(active, samples):
            _take_turn(e, s.completion_ids, s.finished, budgets[e.index], limits, tokenizer, s.logprobs)
        turn += 1
    out = []
    for e in episodes:
        _finish(e, limits, tokenizer)
        out.append(e.t)
    return out


def _turn_limit(env: Environment | None, limits: Limits) -> int:
    own = getattr(env, "max_turns", None)
    return min(limits.max_turns, own) if own else limits.max_turns


def _start(index: int, row: dict[str, Any], make_env, limits: Limits, tokenizer, renderers: dict) -> _Episode:
    prompt = row.get("prompt")
    try:
        env = make_env()
        messages = list(env.reset(dict(row)))
        _check_messages(messages, "reset")
        if limits.tools is not None:  # the tools offered are the tools that run (a ToolEnvironment answers others "unknown tool")
            env.tools = tuple(limits.tools)
        names = tuple(getattr(env, "tools", ()))
        key = names if limits.describe_tools else ()
        if key not in renderers:
            renderers[key] = Renderer(tokenizer, tool_schemas(key) if key else None)
        env._alignkit_renderer = renderers[key]
        trajectory = Trajectory(prompt=prompt, prompt_ids=renderers[key].prompt(messages), messages=messages)
        return _Episode(index, env, trajectory)
    except Exception as error:  # noqa: BLE001 - the episode is kept, marked and counted, never the run's crash
        trajectory = Trajectory(prompt=prompt, prompt_ids=list(row.get("prompt_ids") or [tokenizer.eos_token_id]))
        episode = _Episode(index, None, trajectory)
        episode.fail(error)
        return episode


def _check_messages(messages: list, where: str) -> None:
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"{where} must give messages as {{'role': str, 'content': str}} dicts, got {m!r}")


def _take_turn(e: _Episode, ids: list[int], finished: bool, budget: int, limits: Limits, tokenizer, logprobs: list[float] | None = None) -> None:
    cut = len(ids) > budget or not finished
    ids = list(ids[:budget])
    if not ids:  # an empty turn (cannot happen with the local engine: a stop token is a token)
        e.t.truncated, e.done = True, True
        return
    e.append(ids, policy=True, logprobs=None if logprobs is None else logprobs[: len(ids)])
    e.t.turn_ends.append(len(e.t.completion_ids) - 1)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    history = e.t.messages + [{"role": "assistant", "content": text}]
    e.t.messages = history
    try:
        result = e.env.step(text)
        if not isinstance(result, StepResult):
            raise TypeError(f"step must return a StepResult, got {type(result).__name__}")
        observation = result.messages()
        _check_messages(observation, "step")
        e.t.turn_rewards.append(float(result.reward))
    except Exception as error:  # noqa: BLE001 - see _start
        e.fail(error)
        return
    if cut:
        e.t.truncated, e.done = True, True
        return
    if result.done or e.t.turns >= _turn_limit(e.env, limits):
        e.done = True
        return
    between = e.env._alignkit_renderer.between(history, observation)
    if e.length + len(between) >= limits.max_tokens:  # no room for one more policy token
        e.t.truncated, e.done = True, True
        return
    e.append(between, policy=False)
    e.t.messages = history + observation


def _finish(e: _Episode, limits: Limits, tokenizer) -> None:
    t = e.t
    if t.error is None and e.env is not None:
        try:
            own = {k: float(v) for k, v in e.env.metrics().items()}
        except Exception as error:  # noqa: BLE001 - see _start
            e.fail(error)
            own = {}
    else:
        own = {}
    if t.error is None and t.truncated and limits.truncated_reward is not None:
        t.reward = float(limits.truncated_reward)  # a cut episode scored as lost: no way out of a game by the length limit
        t.turn_rewards = t.turn_rewards[:-1] + [t.reward - sum(t.turn_rewards[:-1])] if t.turn_rewards else []
    elif t.error is None and t.turn_rewards:
        t.reward = sum(t.turn_rewards) if limits.reward == "sum" else t.turn_rewards[-1]
    else:
        t.reward = 0.0
    t.metrics = {"turns": float(t.turns), **own}
    t.completion = tokenizer.decode(t.completion_ids, skip_special_tokens=False)
    if e.env is not None and hasattr(e.env, "_alignkit_renderer"):
        del e.env._alignkit_renderer


def episode_stats(trajectories: Sequence[Trajectory], prefix: str = "env/") -> dict[str, float]:
    """The rollout's episode numbers: ``errors`` (a count), ``truncated`` and the share of policy tokens
    (``policy_token_share``), the mean ``turns``, ``tokens`` and every environment metric (the mean over
    the episodes that report it)."""
    n = max(1, len(trajectories))
    out = {
        f"{prefix}errors": float(sum(t.error is not None for t in trajectories)),
        f"{prefix}truncated": sum(t.truncated for t in trajectories) / n,
        f"{prefix}tokens": sum(len(t.prompt_ids) + len(t.completion_ids) for t in trajectories) / n,
    }
    total = sum(len(t.completion_mask) for t in trajectories)
    out[f"{prefix}policy_token_share"] = sum(sum(t.completion_mask) for t in trajectories) / max(1, total)
    names: dict[str, list[float]] = {}
    for t in trajectories:
        for k, v in t.metrics.items():
            names.setdefault(k, []).append(v)
    for k, values in names.items():
        out[f"{prefix}{k}"] = sum(values) / len(values)
    return out


__all__ = ["Limits", "REWARD_MODES", "Renderer", "Trajectory", "episode_stats", "run_episodes", "turn_seed"]
