"""The decoding-strategy protocol: a registry of strategies, what a strategy call sees (:class:`Context`),
what it returns (:class:`Decoding`: samples, cost, statistics) and how its cost is counted.

A *policy* is a model plus a strategy. :func:`decode_with` is the front door::

    result = decode_with("best_of_n", model, tokenizer, prompts, N=8, reward="gold")
    result.samples      # n per prompt, prompt-major (like rollout.generate)
    result.cost         # forward passes, tokens processed / generated, reward calls, wall time
    result.stats        # the strategy's own numbers (acceptance rate, analytic KL, ...)
    result.log_ratio    # per sample: log p_strategy(y|x) - log pi_model(y|x) when known (for KL)

A strategy is a function ``fn(ctx, **options) -> Decoding`` registered with ``@STRATEGIES.register(name)``;
its keyword parameters are its options (checked by name, unknown ones listed).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..core.registry import Registry, check_params
from ..rollout.engine import Sample, Sampling, stop_token_ids

STRATEGIES: Registry[Callable[..., "Decoding"]] = Registry("decoding strategy")


@dataclass
class Cost:
    """What a strategy call cost. ``forwards``/``tokens_processed`` per model role (``policy``, ``guide``):
    forward calls and the token positions they ran (rows x query length, padding included);
    ``tokens_generated``: completion tokens produced by the policy's decoder, discarded candidates included;
    ``reward_calls`` / ``reward_sequences``: calls of the reward source and the (prompt, completion) pairs
    they scored; ``wall_s``: wall-clock seconds of the strategy (``estimate_s``, the time spent on an optional
    KL estimate or on fitting a value model before decoding, is reported apart and not included)."""

    forwards: dict[str, int] = field(default_factory=dict)
    tokens_processed: dict[str, int] = field(default_factory=dict)
    tokens_generated: int = 0
    reward_calls: int = 0
    reward_sequences: int = 0
    wall_s: float = 0.0
    estimate_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, float]:
        """One level of ``cost/<name>`` keys (for summaries and JSON lines)."""
        out: dict[str, float] = {}
        for role, value in self.forwards.items():
            out[f"cost/forwards/{role}"] = value
        for role, value in self.tokens_processed.items():
            out[f"cost/tokens_processed/{role}"] = value
        out["cost/tokens_generated"] = self.tokens_generated
        out["cost/reward_calls"] = self.reward_calls
        out["cost/reward_sequences"] = self.reward_sequences
        out["cost/wall_s"] = round(self.wall_s, 4)
        if self.estimate_s:
            out["cost/estimate_s"] = round(self.estimate_s, 4)
        return out


@dataclass
class Decoding:
    """The result of one strategy call: ``samples`` (``n`` per prompt, prompt-major), ``cost``, ``stats`` and
    ``log_ratio`` (per sample, ``log p_strategy(y|x) - log pi_model(y|x)`` or an estimate of it; ``None``
    when the strategy cannot say), ``rewards`` (per sample, the strategy's reward when it used one)."""

    strategy: str
    samples: list[Sample]
    cost: Cost = field(default_factory=Cost)
    stats: dict[str, Any] = field(default_factory=dict)
    log_ratio: list[float] | None = None
    rewards: list[float] | None = None
    exact_logprobs: bool = False  # True: each sample's ``logprobs`` are those of the strategy's own policy

    def logps(self, model, pad_id: int, batch_size: int = 64) -> torch.Tensor | None:
        """Per sample, ``log p_strategy(y|x)`` (exact, or the strategy's estimate): ``log_ratio`` plus the
        model's own sequence log-prob, or the summed ``logprobs`` of a token-level strategy; ``None`` when the
        strategy has neither (e.g. best-of-N without ``kl_samples``)."""
        if self.log_ratio is not None:
            from ..rollout.generate import sample_logprobs

            return torch.tensor(self.log_ratio, dtype=torch.float32) + sample_logprobs(model, self.samples, pad_id, batch_size)
        if self.exact_logprobs and all(s.logprobs is not None for s in self.samples):
            return torch.tensor([float(sum(s.logprobs)) for s in self.samples], dtype=torch.float32)
        return None


class ForwardCounter:
    """Counts forward calls of models by role, and the token positions each ran (a forward pre-hook)."""

    def __init__(self, cost: Cost):
        self.cost = cost
        self.handles: list[Any] = []

    def watch(self, model, role: str) -> None:
        self.cost.forwards.setdefault(role, 0)
        self.cost.tokens_processed.setdefault(role, 0)

        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.cost.forwards[role] += 1
            if torch.is_tensor(ids):
                self.cost.tokens_processed[role] += int(ids.numel())

        self.handles.append(model.register_forward_pre_hook(hook, with_kwargs=True))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def user_text(prompt: Any) -> Any:
    """A chat prompt's last user message (the text a built-in task's gold reward parses); anything else as it is.
    ``alignkit generate`` renders a plain-text prompt as one user message for a chat model (SmolLM2)."""
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return prompt


class CountingSource:
    """A reward source that counts its calls and the sequences it scores into a :class:`Cost`."""

    def __init__(self, source, cost: Cost):
        self.source, self.cost = source, cost
        self.name = getattr(source, "name", "reward")

    def score(self, prompts, completions, **kwargs) -> torch.Tensor:
        self.cost.reward_calls += 1
        self.cost.reward_sequences += len(completions)
        return self.uncounted(prompts, completions, **kwargs)

    def uncounted(self, prompts, completions, **kwargs) -> torch.Tensor:
        """The scores, not counted as the strategy's cost (e.g. a KL estimate's extra samples)."""
        from ..rewards.sources import TaskGoldSource

        if isinstance(self.source, TaskGoldSource):  # a built-in task reads the prompt's text, not chat messages
            prompts = [user_text(p) for p in prompts]
        return self.source.score(prompts, completions, **kwargs).float().reshape(-1)

    __call__ = score


@dataclass
class Context:
    """What a strategy sees: the model and tokenizer, the prompts, ``n`` outputs per prompt, the sampling
    settings, the batch size, the backend for plain sampling, and the call's :class:`Cost` and counters."""

    model: Any
    tokenizer: Any
    prompts: list[Any]
    n: int
    sampling: Sampling
    batch_size: int
    backend: str
    cost: Cost
    counter: ForwardCounter
    progress: bool = False

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def stops(self) -> list[int]:
        return stop_token_ids(self.tokenizer)

    def reward(self, spec) -> CountingSource:
        """The reward source of ``spec`` (anything :func:`~alignkit.rewards.build_reward_source` takes), counted."""
        from ..rewards.sources import build_reward_source

        return CountingSource(build_reward_source(spec), self.cost)

    def load_model(self, spec, role: str):
        """A model for ``role`` (a folder path, or a model object as is), in eval mode, its forwards counted."""
        from pathlib import Path

        if isinstance(spec, (str, Path)):
            from ..models.loading import load_policy_for_inference

            spec = load_policy_for_inference(spec)
        spec.eval()
        self.counter.watch(spec, role)
        return spec

    def prompt_ids(self) -> list[list[int]]:
        """Every prompt's token ids, encoded as the data layer (and ``rollout.generate``) encodes prompts."""
        from ..data.encode import Encoder

        encoder = Encoder(self.tokenizer, max_length=10**9)
        out = [list(p) if isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p) else encoder.prompt_ids(p) for p in self.prompts]
        if any(not ids for ids in out):
            raise ValueError("decode_with: a prompt encodes to no tokens")
        return out

    def make_sample(self, prompt, prompt_ids: list[int], completion: list[int], finished: bool, logprobs: list[float] | None) -> Sample:
        self.cost.tokens_generated += len(completion)
        return Sample(prompt, self.tokenizer.decode(completion, skip_special_tokens=True), list(prompt_ids), list(completion), finished, logprobs)

    def sample(self, n: int, job_ids: Sequence[int] | None = None, sampling: Sampling | None = None) -> list[Sample]:
        """``n`` plain samples per prompt (prompt-major) from the model with the call's settings: exactly the
        samples ``rollout.generate(model, tokenizer, prompts, n=n, job_ids=job_ids, ...)`` draws."""
        from ..rollout.generate import generate

        s = sampling or self.sampling
        out = generate(self.model, self.tokenizer, self.prompts, n=n, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                       top_k=s.top_k, greedy=s.greedy, seed=s.seed, batch_size=self.batch_size, backend=self.backend,
                       truncated_logprobs=s.truncated_logprobs, job_ids=list(job_ids) if job_ids is not None else None, progress=self.progress)
        self.cost.tokens_generated += sum(len(x.completion_ids) for x in out)
        return out


def strategy_names() -> list[str]:
    """Every registered strategy name."""
    _registered()
    return STRATEGIES.names()


def _registered() -> None:
    from . import genarm, guided, nudging, sampling, search, steering, value  # noqa: F401  (registers the built-in strategies)


@contextmanager
def _counting(model):
    cost = Cost()
    counter = ForwardCounter(cost)
    counter.watch(model, "policy")
    start = time.perf_counter()
    try:
        yield cost, counter
    finally:
        cost.wall_s = time.perf_counter() - start - cost.estimate_s
        counter.close()


def check_strategy(strategy: str, options: dict[str, Any]) -> Callable[..., Decoding]:
    """The strategy function of ``strategy``; ``ValueError`` naming the allowed strategies (and the closest) for an
    unknown name, or the accepted options for an unknown one."""
    _registered()
    if strategy not in STRATEGIES:
        raise ValueError(STRATEGIES.unknown(strategy))
    fn = STRATEGIES.get(strategy)
    try:
        check_params(fn, f"decoding strategy {strategy!r}", 1, options)
    except TypeError as e:
        raise ValueError(str(e)) from None
    return fn


def decode_with(strategy: str, model, tokenizer, prompts: Sequence[Any], *, n: int = 1, max_new_tokens: int = 32, temperature: float = 1.0,
                top_p: float = 1.0, top_k: int = 0, greedy: bool = False, seed: int | None = 0, batch_size: int = 64, backend: str = "alignkit",
                progress: bool = False, **options) -> Decoding:
    """Generate ``n`` completions per prompt with ``model`` under decoding strategy ``strategy`` (a registered
    name: :func:`strategy_names`); ``options`` are the strategy's own (e.g. ``N=8, reward="gold"``), checked by
    name. The sampling keywords are those of :func:`alignkit.rollout.generate`. Returns a :class:`Decoding`."""
    fn = check_strategy(strategy, options)
    if n < 1:
        raise ValueError(f"decode_with: n must be >= 1 (got {n})")
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy, seed=seed)
    was_training = model.training
    model.eval()
    try:
        with _counting(model) as (cost, counter), torch.no_grad():
            ctx = Context(model, tokenizer, list(prompts), n, sampling, batch_size, backend, cost, counter, progress)
            result = fn(ctx, **options)
    finally:
        model.train(was_training)
    result.strategy, result.cost = strategy, cost
    return result


def parse_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` (the CLI's ``--strategy-option``) as a dict; values are read as YAML (numbers, bools,
    lists ``[a, b]``), anything else stays a string."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"strategy option {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out
