"""Evaluating an agent: a policy playing whole episodes of an environment (``alignkit eval MODEL --env NAME``).

:func:`evaluate_agent` plays ``n_samples`` episodes per task row with :func:`alignkit.envs.run_episodes`
(temperature ``temperature``, seeded: the same model, rows and seed give the same episodes) and
:func:`agent_metrics` turns the trajectories into the numbers of ``docs/agents.md``:

* ``success_rate``: the share of episodes whose environment reported ``success`` 1 (an episode that ended
  in an environment error counts as failed; None when the environment reports no ``success``);
* ``turns``: assistant turns per episode (``turns_to_success``: the same over the successful episodes);
* ``tool_calls`` / ``invalid_calls``: tool-call blocks per episode, and those that were malformed, named
  an unknown tool or raised (``invalid_call_rate``: invalid over all calls). The environment's own counts
  when it reports them (:class:`~alignkit.envs.ToolEnvironment` does), else the ``<tool_call>`` blocks
  of the assistant turns, parsed (:func:`alignkit.envs.parse_tool_calls`);
* ``regret``: the mean of the environment's ``regret`` over the episodes that report it (``guess_number``:
  wrong guesses, ``max_guesses`` for a game not won); None when none does;
* ``reward`` (± s.e.), ``errors`` (a count), ``truncated`` (share), ``tokens`` per trajectory, and the
  mean of every other number the environment's ``metrics()`` reports (``env_metrics``).

Evaluation sits above :mod:`alignkit.envs` and :mod:`alignkit.rollout` and imports no training code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..envs import Limits, Trajectory, check_options, environment_class, parse_tool_calls, run_episodes
from ..rollout import Sampling, build_rollout_engine, resolve_backend
from .metrics import mean_and_se

# `alignkit eval --env --backend local` is alignkit's own KV-cache decoder (the registered engine `alignkit`)
BACKEND_ALIASES = {"local": "alignkit"}
# what each reported number means (the report's "meaning" column)
MEANINGS = {
    "env": "the environment (registered name or module:Class)",
    "episodes": "episodes played (task rows x samples per row)",
    "reward": "mean trajectory reward (the environment's units); higher is better",
    "reward_se": "standard error of the mean trajectory reward",
    "success_rate": "share of episodes the environment scored success 1 (environment errors count as failures); higher is better",
    "success_rate_se": "standard error of the success rate",
    "turns": "assistant turns per episode",
    "turns_to_success": "assistant turns per successful episode; lower is better",
    "tool_calls": "tool-call blocks per episode",
    "invalid_calls": "malformed, unknown-tool or failing tool calls per episode; lower is better",
    "invalid_call_rate": "invalid calls / all tool calls; lower is better",
    "regret": "the environment's regret per episode (guess_number: wrong guesses, max_guesses for a game not won); lower is better",
    "regret_se": "standard error of the mean regret",
    "errors": "episodes that ended in an environment exception (kept with reward 0)",
    "truncated": "share of episodes cut by a length limit (max_new_tokens per turn, max_tokens per trajectory)",
    "tokens": "tokens per trajectory (prompt, turns, environment tokens)",
    "warning": "a problem with the evaluation that makes its numbers doubtful",
}


@dataclass
class AgentEval:
    """The agent metrics of one evaluation (see the module docstring); ``samples``: the first conversations."""

    env: str
    episodes: int
    reward: float
    reward_se: float
    success_rate: float | None
    success_rate_se: float | None
    turns: float
    turns_to_success: float | None
    tool_calls: float
    invalid_calls: float
    invalid_call_rate: float | None
    regret: float | None
    regret_se: float | None
    errors: int
    truncated: float
    tokens: float
    env_metrics: dict[str, float] = field(default_factory=dict)
    warning: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The scalar numbers, with the environment's own as ``env/<name>``."""
        out = {k: v for k, v in self.as_dict().items() if not isinstance(v, (list, dict))}
        out.update({f"env/{k}": v for k, v in self.env_metrics.items()})
        return out

    def table(self) -> list[dict[str, Any]]:
        """``key, value, meaning`` rows of :meth:`summary` (the HTML report's table)."""
        return [{"key": k, "value": v, "meaning": MEANINGS.get(k, "the environment's own metric, mean over episodes")}
                for k, v in self.summary().items()]


def _count_calls(t: Trajectory) -> tuple[float, float]:
    """(tool calls, invalid calls) of one episode: the environment's counts, else its turns' parsed blocks."""
    if "tool_calls" in t.metrics:
        return t.metrics["tool_calls"], t.metrics.get("invalid_calls", 0.0)
    calls = [c for m in t.messages if m.get("role") == "assistant" for c in parse_tool_calls(str(m.get("content", "")))]
    return float(len(calls)), float(sum(not c.valid for c in calls))


def agent_metrics(trajectories: Sequence[Trajectory], env: str = "", settings: dict[str, Any] | None = None, keep_samples: int = 4) -> AgentEval:
    """The :class:`AgentEval` of finished trajectories (``alignkit.envs.run_episodes``' output)."""
    if not trajectories:
        raise ValueError("agent evaluation: no episodes were played (no task rows?)")
    n = len(trajectories)
    reward, reward_se = mean_and_se([t.reward for t in trajectories])
    reporting = [t for t in trajectories if "success" in t.metrics or t.error is not None]
    success_rate = success_se = turns_to_success = None
    if any("success" in t.metrics for t in trajectories):
        wins = [float(t.error is None and t.metrics.get("success", 0.0) >= 1.0) for t in reporting]
        success_rate, success_se = mean_and_se(wins)
        won = [t.turns for t, w in zip(reporting, wins) if w]
        turns_to_success = sum(won) / len(won) if won else None
    calls = [_count_calls(t) for t in trajectories]
    total_calls, total_invalid = sum(c for c, _ in calls), sum(i for _, i in calls)
    regrets = [t.metrics["regret"] for t in trajectories if "regret" in t.metrics]
    regret, regret_se = mean_and_se(regrets) if regrets else (None, None)
    own: dict[str, list[float]] = {}
    for t in trajectories:
        for k, v in t.metrics.items():
            if k not in ("turns", "success", "regret", "tool_calls", "invalid_calls"):
                own.setdefault(k, []).append(v)
    samples = [{"reward": t.reward, "turns": t.turns, "truncated": t.truncated, "error": t.error,
                "conversation": " | ".join(f"[{m['role']}] {m['content']}" for m in t.messages)} for t in trajectories[:keep_samples]]
    unplayed = sum(t.turns == 0 and t.error is None for t in trajectories)
    warning = (f"{unplayed} of {n} episodes never got a turn: the first observation (with the tools' schemas, unless describe_tools is off) "
               "leaves no room under max_tokens" if unplayed else None)
    return AgentEval(
        env=env, episodes=n, reward=reward, reward_se=reward_se, success_rate=success_rate, success_rate_se=success_se,
        turns=sum(t.turns for t in trajectories) / n, turns_to_success=turns_to_success,
        tool_calls=total_calls / n, invalid_calls=total_invalid / n, invalid_call_rate=total_invalid / total_calls if total_calls else None,
        regret=regret, regret_se=regret_se, errors=sum(t.error is not None for t in trajectories),
        truncated=sum(t.truncated for t in trajectories) / n, tokens=sum(len(t.prompt_ids) + len(t.completion_ids) for t in trajectories) / n,
        env_metrics={k: sum(v) / len(v) for k, v in own.items()}, warning=warning, settings=dict(settings or {}), samples=samples,
    )


def evaluate_agent(
    model,
    tokenizer,
    env: str,
    rows: Sequence[dict[str, Any]],
    options: dict[str, Any] | None = None,
    n_samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    seed: int = 0,
    limits: Limits | None = None,
    backend: str = "alignkit",
    engine=None,
    keep_samples: int = 4,
    greedy: bool = False,
) -> AgentEval:
    """``n_samples`` episodes of ``env`` (a registered name or ``module:Class``, built with ``options``) per
    row of ``rows`` (dicts with ``prompt`` and any fields the environment reads), played by ``model`` through
    ``engine`` (default: a ``backend`` engine built here and closed after: ``alignkit`` or its alias ``local``,
    the KV-cache decoder; ``hf``, ``model.generate``; ``vllm``; ``auto``), ``max_new_tokens`` per turn (argmax
    tokens with ``greedy``), within ``limits`` (default :class:`~alignkit.envs.Limits`); their :func:`agent_metrics`."""
    options = dict(options or {})
    cls = environment_class(env)
    check_options(cls, options, "--env-option")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "prompt" not in row:
            raise ValueError(f"agent evaluation: row {i} has no 'prompt' field (got {row!r:.80})")
    limits = limits or Limits()
    episodes = [dict(row) for row in rows for _ in range(n_samples)]
    own_engine = engine is None
    if own_engine:
        backend = resolve_backend(BACKEND_ALIASES.get(backend, backend), model)  # what the settings record: the engine that played
        engine = build_rollout_engine(backend, model, tokenizer)
    try:
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, greedy=greedy)
        trajectories = run_episodes(engine, lambda: cls(**options), episodes, list(range(len(episodes))), sampling, limits,
                                    batch_size=max(1, len(episodes)))
    finally:
        if own_engine:
            engine.close()
    settings = {"options": options, "samples_per_row": n_samples, "rows": len(rows), "max_new_tokens": max_new_tokens, "temperature": temperature,
                "seed": seed, "max_turns": limits.max_turns, "max_tokens": limits.max_tokens, "reward_mode": limits.reward,
                "tools": None if limits.tools is None else list(limits.tools), "describe_tools": limits.describe_tools, "backend": backend if own_engine else type(engine).__name__, "greedy": greedy}
    return agent_metrics(trajectories, env, settings, keep_samples)


def run_env(run_dir: Path) -> dict[str, Any] | None:
    """The ``rl.env``, ``rl.sampling`` and ``task`` sections of a run folder's ``config.yaml`` when the run
    trained over episodes (``rl.env`` set), else None: the defaults of ``alignkit eval RUN``."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return None
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    env = (config.get("rl") or {}).get("env") if config.get("algorithm") == "rl" else None
    if not env:
        return None
    return {"env": env, "sampling": (config.get("rl") or {}).get("sampling") or {}, "task": config.get("task")}


def agent_rows(task: Any = None, n: int = 64, split: str = "test", data: Path | None = None) -> list[dict[str, Any]]:
    """The rows whose episodes are played: a JSONL ``data`` file's rows (each with ``prompt`` and any
    fields the environment reads, e.g. ``answer``, ``secret``; the first ``n``), else the first ``n``
    ``split`` prompts of ``task`` (a name, a task-section mapping such as ``{name: arithmetic, level: 3}``,
    or None: ``arithmetic``)."""
    if data is not None:
        rows = []
        for i, line in enumerate(Path(data).read_text(encoding="utf-8").splitlines()):
            if len(rows) >= n:
                break
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{data}: line {i + 1} is not JSON ({e.msg})") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{data}: row {i + 1} has no string 'prompt' field (the environment's task row)")
        return rows
    from ..config import TaskConfig
    from ..tasks import get_task

    config = TaskConfig(**task) if isinstance(task, dict) else TaskConfig(name=task or "arithmetic")
    return [{"prompt": p} for p in get_task(config).prompts(n, split)]


def write_agent_eval(result: AgentEval, folder: Path, title: str) -> dict[str, Path]:
    """``eval-env-<env>.json`` and ``eval-env-<env>.html`` (metrics with their meaning, the settings, the
    first conversations) in ``folder``."""
    from .report import write_report

    folder.mkdir(parents=True, exist_ok=True)
    stem = "eval-env-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in result.env)
    data = {**result.summary(), "env_metrics": result.env_metrics, "settings": result.settings, "samples": result.samples}
    json_path = folder / f"{stem}.json"
    json_path.write_text(json.dumps(data, indent=1))
    settings = [{"key": k, "value": json.dumps(v) if isinstance(v, (list, dict)) else v, "meaning": "an evaluation setting"}
                for k, v in result.settings.items()]
    html_path = write_report(folder, title, [("Agent metrics", result.table()), ("Settings", settings), ("Episodes", result.samples)],
                             filename=f"{stem}.html")
    return {"json": json_path, "report": html_path}


def format_agent_table(result: AgentEval) -> str:
    """The scalar numbers as aligned ``key  value`` lines (stdout of ``alignkit eval --env``)."""
    summary = result.summary()
    width = max(len(k) for k in summary)
    lines = []
    for k, v in summary.items():
        shown = "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append(f"{k:<{width}}  {shown}")
    return "\n".join(lines)


__all__ = ["AgentEval", "MEANINGS", "agent_metrics", "evaluate_agent", "format_agent_table", "write_agent_eval"]
