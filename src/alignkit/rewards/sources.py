"""One interface for every reward source: ``score(prompts, completions) -> Tensor [N]``.

Implementations: a trained reward model (:class:`RewardModelSource`, scalar or ensemble), a
multi-objective gated model (:class:`MultiObjectiveRewardSource`), a process reward model
(:class:`ProcessRewardSource`, per-step scores and an aggregate), a pairwise
preference model (:class:`PreferenceModelSource`, ``compare`` gives P(a ≻ b)), a Python function
(:class:`FunctionSource`, only from an explicit ``module:function`` path), an ensemble of sources
(:class:`EnsembleSource`), a weighted / multi-objective combination (:class:`CombinedSource`) and a
built-in task's gold reward (:class:`TaskGoldSource`). :func:`build_reward_source` makes one from a
YAML-style spec::

    gold                                   # the built-in task's gold reward (gold:sentiment)
    runs/reward/final                      # a saved reward model / ensemble / preference model folder
    alignkit.rewards.verifiable:exact_match
    {type: function, path: "mypkg.rewards:fmt", kwargs: {pattern: "..."}}
    {type: ensemble, members: [runs/a/final, runs/b/final], reduce: mean_minus_std, lam: 1.0}
    {type: model, path: runs/mo/final, attribute: verbosity}   # one head of a multi-objective model
    {type: model, path: runs/prm/final, aggregate: prod}       # a process reward model
    {type: combine, sources: [{source: gold, weight: 1.0, reference: 0.0}, ...], transform: log_sigmoid}

Extra per-example inputs (e.g. ``answers=[...]`` for exact match) are passed as keyword arguments of
``score`` and reach function sources unchanged.
"""

from __future__ import annotations

import importlib
import numbers
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..core.registry import Registry
from ..core.user_code import UserCodeError, is_code_spec, load_object
from ..models.loading import looks_like_hub_id
from .transforms import ENSEMBLE_REDUCTIONS, apply_transform, ensemble_reduce

# reward sources named by one word (`rl.reward: vader`): name -> "module:Class", imported when built
NAMED_SOURCES: Registry[str] = Registry("named reward source")
NAMED_SOURCES.register("vader", "alignkit.rewards.vader:VaderSource")  # VADER sentiment of the completion (rewards/vader.py)
NAMED_SOURCES.register("code", "alignkit.rewards.code:CodeRewardSource")  # the row's unit tests in a sandbox (rewards/code.py)


def _named_source(name: str) -> "RewardSource":
    module, cls = NAMED_SOURCES.get(name).split(":")
    return getattr(importlib.import_module(module), cls)()


class RewardFunctionError(ValueError):
    """A reward function that raised or returned something other than one finite number per completion;
    the message names the function and the sample."""


class RewardSource:
    """``score(prompts, completions, **context) -> float32 Tensor [N]``."""

    name: str = "reward"

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], *, progress: bool = False, **context: Any) -> Tensor:
        raise NotImplementedError

    def __call__(self, prompts, completions, **kwargs) -> Tensor:
        return self.score(prompts, completions, **kwargs)


def _check_lengths(prompts: Sequence[Any], completions: Sequence[Any]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")


# --------------------------------------------------------------------------------------------------
# model-based sources
# --------------------------------------------------------------------------------------------------
class _ModelBacked(RewardSource):
    def __init__(self, path: str | Path, batch_size: int = 32, max_length: int = 512, device: str | None = None, dtype: str = "float32"):
        from ..config import ModelConfig
        from ..data.encode import Encoder
        from ..models.loading import load_tokenizer, resolve_model_path
        from .models import load_any_reward_model

        self.path = resolve_model_path(path, "reward model")
        if not (self.path / "config.json").exists() and not (self.path / "ensemble.json").exists():
            raise FileNotFoundError(f"{self.path}: not a reward model folder (no config.json or ensemble.json)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tok_dir = self.path / "member-0" if (self.path / "ensemble.json").exists() and not (self.path / "tokenizer_config.json").exists() else self.path
        self.tokenizer = load_tokenizer(tok_dir)
        self.model = load_any_reward_model(self.path, ModelConfig(dtype=dtype)).to(self.device)
        self.encoder = Encoder(self.tokenizer, max_length, "left", source=str(self.path))
        self.batch_size = batch_size
        self.name = self.path.name

    @torch.no_grad()
    def _run(self, seqs: list[list[int]], progress: bool, description: str) -> Tensor:
        """``[N, L]`` outputs of the model for token sequences (batched, longest first for less padding)."""
        from ..core.progress import make_progress
        from .models import RewardForward, pad_batch

        forward = RewardForward(self.model)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out: Tensor | None = None
        with make_progress(progress) as bar_set:
            bar = bar_set.add_task(description, total=len(seqs), info="")
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = pad_batch([seqs[i] for i in idx], self.tokenizer.pad_token_id)
                values = forward(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)).cpu()
                if out is None:
                    out = torch.zeros(len(seqs), values.shape[-1])
                out[idx] = values
                bar_set.update(bar, advance=len(idx))
        return out if out is not None else torch.zeros(0, 1)


class RewardModelSource(_ModelBacked):
    """A saved scalar reward model, or an ensemble folder reduced by ``reduce`` (see
    :func:`alignkit.rewards.transforms.ensemble_reduce`)."""

    def __init__(self, path: str | Path, reduce: str = "mean", lam: float = 1.0, **kwargs: Any):
        super().__init__(path, **kwargs)
        if reduce not in ENSEMBLE_REDUCTIONS:
            raise KeyError(f"unknown ensemble reduction {reduce!r}; allowed: {', '.join(ENSEMBLE_REDUCTIONS)}")
        self.reduce, self.lam = reduce, lam
        kind = getattr(self.model.config, "reward_type", "scalar")
        if kind == "preference":
            raise ValueError(f"{path} is a pairwise preference model; use type: preference")
        if kind in ("multi_objective", "process", "brme", "context", "principles"):
            raise ValueError(f"{path} is a {kind} reward model; load it with build_reward_source")

    def score_members(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        """``[N, K]`` rewards (K = 1 for a single model)."""
        _check_lengths(prompts, completions)
        seqs = [self._encode(p, c) for p, c in zip(prompts, completions)]
        return self._run(seqs, progress, f"reward {self.name}")

    def _encode(self, prompt, completion) -> list[int]:
        from .models import encode_single

        return encode_single(self.encoder, prompt, completion)

    def score(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        return ensemble_reduce(self.score_members(prompts, completions, progress=progress), self.reduce, self.lam)


def _batched_forward(n_items: int, lengths: list[int], batch_size: int, fn: Callable[[list[int]], Any], progress: bool, description: str) -> None:
    """Call ``fn(indices)`` on batches of item indices, longest first, with a progress bar."""
    from ..core.progress import make_progress

    order = sorted(range(n_items), key=lambda i: -lengths[i])
    with make_progress(progress) as bar_set:
        bar = bar_set.add_task(description, total=n_items, info="")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            fn(idx)
            bar_set.update(bar, advance=len(idx))


class MultiObjectiveRewardSource(_ModelBacked):
    """A saved multi-objective (ArmoRM-style) reward model. ``score`` is the gated reward
    ``β Σ_k g_k(x) r_k(x, y)``, or one attribute's head when ``attribute`` is set;
    ``components`` gives the attribute scores ``[N, K]``, the gate ``[N, K]`` and the reward ``[N]``."""

    def __init__(self, path: str | Path, attribute: str | None = None, **kwargs: Any):
        super().__init__(path, **kwargs)
        self.attributes = self.model.attributes
        if attribute is not None and attribute not in self.attributes:
            raise KeyError(f"{path}: no attribute {attribute!r}; it has {', '.join(self.attributes)}")
        self.attribute = attribute

    @torch.no_grad()
    def components(self, prompts, completions, *, progress: bool = False, **context: Any) -> dict[str, Tensor]:
        from .models import pad_batch

        _check_lengths(prompts, completions)
        seqs, prompt_last = [], []
        for p, c in zip(prompts, completions):
            out = self.encoder.encode({"prompt": p, "completion": c}, "sft")
            seqs.append(out["input_ids"])
            prompt_last.append(len(out["prompt_ids"]) - 1)
        k = len(self.attributes)
        scores, gates = torch.zeros(len(seqs), k), torch.zeros(len(seqs), k)

        def run(idx: list[int]) -> None:
            batch = pad_batch([seqs[i] for i in idx], self.tokenizer.pad_token_id)
            last = torch.tensor([prompt_last[i] for i in idx], device=self.device)
            s, g, _ = self.model(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device), last)
            scores[idx], gates[idx] = s.float().cpu(), g.float().cpu()

        _batched_forward(len(seqs), [len(x) for x in seqs], self.batch_size, run, progress, f"reward {self.name}")
        scale = float(self.model.gate.log_scale.exp())
        return {"scores": scores, "gate": gates, "reward": scale * (gates * scores).sum(-1)}

    def score_attributes(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        """``[N, K]`` attribute scores (columns in the order of ``self.attributes``)."""
        return self.components(prompts, completions, progress=progress)["scores"]

    def score(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        parts = self.components(prompts, completions, progress=progress)
        if self.attribute is not None:
            return parts["scores"][:, self.attributes.index(self.attribute)]
        return parts["reward"]


class ProcessRewardSource(_ModelBacked):
    """A saved process reward model. ``score_steps`` gives each completion's per-step probabilities
    P(step is good) (read at every step's last token); ``score`` reduces them with ``aggregate``
    (``min``, ``prod``, ``mean`` or ``last``; default the model's ``config.step_aggregate``).

    A completion string is cut into steps by the model's ``config.step_split`` regex (or ``step_split``
    here); pass ``steps=[[...], ...]`` to ``score``/``score_steps`` to give the steps directly."""

    def __init__(self, path: str | Path, aggregate: str | None = None, step_split: str | None = None, **kwargs: Any):
        from .models import DEFAULT_STEP_SPLIT, STEP_AGGREGATES

        super().__init__(path, **kwargs)
        self.aggregate = aggregate or getattr(self.model.config, "step_aggregate", None) or "min"
        if self.aggregate not in STEP_AGGREGATES:
            raise KeyError(f"unknown step aggregate {self.aggregate!r}; allowed: {', '.join(STEP_AGGREGATES)}")
        self.step_split = step_split or getattr(self.model.config, "step_split", None) or DEFAULT_STEP_SPLIT

    @torch.no_grad()
    def score_steps(self, prompts, completions=None, *, steps: Sequence[Sequence[str]] | None = None, progress: bool = False, **context: Any) -> list[Tensor]:
        """Per-step probabilities, one 1-D tensor per completion."""
        from .models import encode_steps, pad_batch, split_steps

        if steps is None:
            if completions is None:
                raise ValueError("score_steps needs completions or steps")
            _check_lengths(prompts, completions)
            steps = [split_steps(c, self.step_split) for c in completions]
        _check_lengths(prompts, steps)
        seqs, ends = [], []
        for p, st in zip(prompts, steps):
            _, ids, e = encode_steps(self.encoder, p, list(st)) if st else (None, self.encoder.prompt_ids(p), [])
            if len(ids) > self.encoder.max_length:
                cut = len(ids) - self.encoder.max_length
                ids, e = ids[cut:], [j - cut for j in e if j >= cut]
            seqs.append(ids)
            ends.append(e)
        out: list[Tensor] = [torch.zeros(0)] * len(seqs)

        def run(idx: list[int]) -> None:
            batch = pad_batch([seqs[i] for i in idx], self.tokenizer.pad_token_id)
            logits = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)).logits[..., 0].float().cpu()
            for row, i in enumerate(idx):
                out[i] = torch.sigmoid(logits[row, ends[i]])

        _batched_forward(len(seqs), [len(x) for x in seqs], self.batch_size, run, progress, f"process {self.name}")
        return out

    def score(self, prompts, completions, *, progress: bool = False, steps: Sequence[Sequence[str]] | None = None, **context: Any) -> Tensor:
        from .models import aggregate_steps

        per_step = self.score_steps(prompts, completions, steps=steps, progress=progress)
        return torch.stack([aggregate_steps(x, self.aggregate) for x in per_step]).float() if per_step else torch.zeros(0)


class PreferenceModelSource(_ModelBacked):
    """A pairwise preference model. ``compare(prompts, a, b)`` gives P(a ≻ b), antisymmetric by
    construction; ``score`` is the logit of P(completion ≻ reference) against ``references`` (a keyword
    of ``score``, one per prompt) or the fixed ``reference`` completion given here."""

    def __init__(self, path: str | Path, reference: str | None = None, **kwargs: Any):
        super().__init__(path, **kwargs)
        self.reference = reference

    def logits(self, prompts, a, b, *, progress: bool = False) -> Tensor:
        """Antisymmetrised logit ``(ℓ(a, b) − ℓ(b, a)) / 2``, ``[N]``."""
        from .models import encode_pair_input

        _check_lengths(prompts, a)
        _check_lengths(prompts, b)
        n = len(prompts)
        seqs = [encode_pair_input(self.encoder, p, x, y) for p, x, y in zip(prompts, a, b)]
        seqs += [encode_pair_input(self.encoder, p, y, x) for p, x, y in zip(prompts, a, b)]
        out = self._run(seqs, progress, f"preference {self.name}")[:, 0]
        return (out[:n] - out[n:]) / 2

    def compare(self, prompts, a, b, *, progress: bool = False) -> Tensor:
        return torch.sigmoid(self.logits(prompts, a, b, progress=progress))

    def score(self, prompts, completions, *, progress: bool = False, references: Sequence[Any] | None = None, **context: Any) -> Tensor:
        if references is None:
            if self.reference is None:
                raise ValueError("a preference model scores against a reference: pass references=[...] or set reference")
            references = [self.reference] * len(prompts)
        return self.logits(prompts, completions, references, progress=progress)


# --------------------------------------------------------------------------------------------------
# functions, tasks, ensembles, combinations
# --------------------------------------------------------------------------------------------------
def load_function(path: str) -> Callable[..., Any]:
    """``module:function`` or ``path/to/file.py:function`` -> the function (:mod:`alignkit.core.user_code`:
    the module from the working directory or the installed packages, a file by its path); one-line
    :class:`~alignkit.core.user_code.UserCodeError` otherwise."""
    return load_object(path, "reward function")


class FunctionSource(RewardSource):
    """A batched Python function ``fn(prompts, completions, **kwargs, **context) -> N numbers``."""

    def __init__(self, fn: Callable[..., Any] | str, kwargs: dict[str, Any] | None = None, name: str | None = None):
        self.fn = load_function(fn) if isinstance(fn, str) else fn
        self.kwargs = dict(kwargs or {})
        self.name = name or (fn if isinstance(fn, str) else getattr(fn, "__name__", "function"))

    def _call(self, prompts: list, completions: list, context: dict[str, list]) -> Any:
        return self.fn(prompts, completions, **self.kwargs, **context)

    def _where(self, i: int, prompts: Sequence[Any]) -> str:
        prompt = " ".join(str(prompts[i]).split())
        return f"sample {i} (prompt {prompt[:60] + '...' if len(prompt) > 60 else prompt!r})"

    def score(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        _check_lengths(prompts, completions)
        prompts, completions = list(prompts), list(completions)
        n = len(completions)
        try:
            values = self._call(prompts, completions, context)
        except Exception as e:  # noqa: BLE001 - a user function may raise anything: named with its row
            raise self._failure(e, prompts, completions, context) from e
        return self._check_values(values, prompts, n)

    def _failure(self, error: Exception, prompts: list, completions: list, context: dict[str, list]) -> "RewardFunctionError":
        """The error of a raising function, naming the first sample that raises on its own (the batch
        is retried one sample at a time to find it)."""
        what = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        for i in range(len(completions)):
            try:
                self._call(prompts[i : i + 1], completions[i : i + 1], {k: v[i : i + 1] for k, v in context.items()})
            except Exception as e:  # noqa: BLE001 - see above
                return RewardFunctionError(f"reward function {self.name} raised {type(e).__name__}: {' '.join(str(e).split())[:200]} on {self._where(i, prompts)}")
        return RewardFunctionError(f"reward function {self.name} raised {what} on a batch of {len(completions)} samples (no single sample raises on its own)")

    def _check_values(self, values: Any, prompts: list, n: int) -> Tensor:
        """``values`` as ``float32 [n]``; None, strings, non-finite numbers or a wrong count are named."""
        if values is None:
            raise RewardFunctionError(f"reward function {self.name} returned None; expected {n} numbers, one per completion")
        if isinstance(values, (str, bytes)):
            raise RewardFunctionError(f"reward function {self.name} returned a string ({values[:40]!r}); expected {n} numbers, one per completion")
        if isinstance(values, Tensor):
            out = values.detach().float().cpu().reshape(-1)
        else:
            try:
                items = list(values)
            except TypeError:
                raise RewardFunctionError(f"reward function {self.name} returned {type(values).__name__} {values!r}; expected a list of {n} numbers") from None
            if len(items) != n:
                raise RewardFunctionError(f"reward function {self.name} returned {len(items)} values for {n} completions (one number per completion)")
            for i, v in enumerate(items):
                if isinstance(v, bool) or not isinstance(v, numbers.Real) and not (isinstance(v, Tensor) and v.numel() == 1):
                    got = "None" if v is None else f"{type(v).__name__} {v!r}"[:60]
                    raise RewardFunctionError(f"reward function {self.name} returned {got} for {self._where(i, prompts)}; expected a number")
            out = torch.tensor([float(v) for v in items], dtype=torch.float32)
        if out.numel() != n:
            raise RewardFunctionError(f"reward function {self.name} returned {out.numel()} values for {n} completions (one number per completion)")
        bad = (~torch.isfinite(out)).nonzero().flatten()
        if bad.numel():
            i = int(bad[0])
            raise RewardFunctionError(f"reward function {self.name} returned {out[i].item()} for {self._where(i, prompts)}; rewards must be finite")
        return out


class TaskGoldSource(RewardSource):
    """The gold reward of a built-in task."""

    def __init__(self, task: str = "sentiment"):
        from ..tasks import get_task

        self.task = get_task(task)
        self.name = f"gold:{task}"

    def score(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        _check_lengths(prompts, completions)
        return torch.tensor(self.task.gold_rewards(list(prompts), list(completions)), dtype=torch.float32)


class EnsembleSource(RewardSource):
    """Members' rewards ``[N, K]`` reduced by ``reduce`` (mean, mean_minus_std, min, ...)."""

    def __init__(self, members: Sequence[RewardSource], reduce: str = "mean", lam: float = 1.0):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if reduce not in ENSEMBLE_REDUCTIONS:
            raise KeyError(f"unknown ensemble reduction {reduce!r}; allowed: {', '.join(ENSEMBLE_REDUCTIONS)}")
        self.members, self.reduce, self.lam = list(members), reduce, lam
        self.name = "ensemble"

    def score_members(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        cols = []
        for m in self.members:
            s = m.score_members(prompts, completions, progress=progress, **context) if hasattr(m, "score_members") else m.score(prompts, completions, progress=progress, **context)[:, None]
            cols.append(s)
        return torch.cat(cols, dim=-1)

    def score(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        return ensemble_reduce(self.score_members(prompts, completions, progress=progress, **context), self.reduce, self.lam)


class CombinedSource(RewardSource):
    """``Σ_i w_i · T(r_i)``: a weighted, optionally transformed sum of several rewards. ``transform`` is
    ``none``, ``log_sigmoid`` (``log σ(r_i − reference_i)``, the "good on all" sum), ``clip`` or ``whiten``."""

    def __init__(self, sources: Sequence[RewardSource], weights: Sequence[float] | None = None, transform: str = "none",
                 references: Sequence[float] | None = None, params: dict[str, Any] | None = None):
        self.sources = list(sources)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.sources)
        self.references = list(references) if references is not None else [0.0] * len(self.sources)
        if not (len(self.weights) == len(self.references) == len(self.sources)):
            raise ValueError("combine: sources, weights and references must have the same length")
        self.transform, self.params = transform, dict(params or {})
        apply_transform(transform, torch.zeros(1), **({"reference": 0.0} | self.params))  # validates the name
        self.name = "combined"

    def components(self, prompts, completions, *, progress: bool = False, **context: Any) -> dict[str, Tensor]:
        out = {}
        for i, s in enumerate(self.sources):
            out[f"{i}:{s.name}"] = s.score(prompts, completions, progress=progress, **context)
        return out

    def score(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        parts = self.components(prompts, completions, progress=progress, **context).values()
        total = torch.zeros(len(completions))
        for r, w, ref in zip(parts, self.weights, self.references):
            total = total + w * apply_transform(self.transform, r, reference=ref, **self.params)
        return total


# --------------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------------
def check_reward_folder(path: str | Path, what: str = "reward model") -> Path:
    """``path`` is a reward model folder (a sequence/token-classification model or an ensemble), not a
    causal LM or another folder; a one-line ``ValueError`` says what it is instead. Loads no model; a Hub
    id is resolved to its cached snapshot (:func:`alignkit.models.loading.resolve_model_path`), which is
    returned."""
    import json

    from ..models.loading import resolve_model_path

    path = resolve_model_path(path, what)
    if not path.is_dir():
        raise ValueError(f"{what}: {path} is {'a file' if path.exists() else 'not there'}; expected a reward model folder")
    if (path / "ensemble.json").exists():
        return path
    config = path / "config.json"
    if not config.exists():
        raise ValueError(f"{what}: {path} is not a reward model folder (no config.json or ensemble.json)")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{what}: {config} is not valid JSON ({e})") from None
    architectures = data.get("architectures") or []
    if data.get("reward_type") is None and not any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures):
        kind = f"a causal LM ({', '.join(architectures)})" if any(a.endswith("ForCausalLM") for a in architectures) else f"not a reward model (architectures: {', '.join(architectures) or 'none'})"
        raise ValueError(f"{what}: {path} is {kind}, not a reward model; train one with algorithm: reward, or give gold or module:function")
    return path


def _not_a_source(spec: str) -> str:
    """Why a string is no reward source (the spec's last case): a path that is not there, or no known form."""
    if spec.startswith((".", "/", "~")) or "/" in spec or "\\" in spec:
        return f"{spec} does not exist (expected a reward model folder, a Hub id org/name, or path/to/file.py:function)"
    return (f"not 'gold[:task]', a named source ({', '.join(NAMED_SOURCES.names())}), an existing model folder, "
            "nor a 'module:function' or 'path/to/file.py:function' spec")


def check_reward_spec(spec: Any, what: str = "reward") -> None:
    """Check a reward spec without loading a model: model folders are reward models (not causal LMs),
    function paths import and name a callable, types are known. Raises a one-line ``ValueError``."""
    if isinstance(spec, RewardSource):
        return
    if isinstance(spec, str):
        if spec == "gold" or spec.startswith("gold:"):
            return
        if spec in NAMED_SOURCES:
            try:
                _named_source(spec)
            except ImportError as e:
                raise ValueError(f"{what}: {e}") from None
            return
        if Path(spec).exists() or looks_like_hub_id(spec):
            check_reward_folder(spec, what)
            return
        if is_code_spec(spec):
            try:
                load_function(spec)
            except UserCodeError as e:
                raise ValueError(f"{what}: {e}") from None
            return
        raise ValueError(f"{what}: reward source '{spec}': {_not_a_source(spec)}")
    if not isinstance(spec, dict):
        raise ValueError(f"{what}: expected a string or a mapping, got {type(spec).__name__}")
    kind = spec.get("type") or ("function" if "function" in spec else "model" if "path" in spec else None)
    if kind in ("model", "preference", "multi_objective", "process", "spans"):
        if "path" not in spec:
            raise ValueError(f"{what}: a {kind} reward source needs a path")
        check_reward_folder(spec["path"], f"{what}.path")
    elif kind == "function":
        check_reward_spec(spec.get("function") or spec.get("path") or "", what)
    elif kind == "ensemble":
        for i, member in enumerate(spec.get("members") or []):
            check_reward_spec(member, f"{what}.members[{i}]")
    elif kind == "combine":
        for i, item in enumerate(spec.get("sources") or []):
            check_reward_spec(item["source"] if isinstance(item, dict) and "source" in item else item, f"{what}.sources[{i}]")
    elif kind != "gold":
        raise ValueError(f"{what}: unknown type {kind!r}; allowed: model, preference, multi_objective, process, spans, function, gold, ensemble, combine")


def _model_source(path: str | Path, spec: dict[str, Any]) -> RewardSource:
    import json

    path = check_reward_folder(path)
    options = {k: spec[k] for k in ("batch_size", "max_length", "device", "dtype") if k in spec}
    config = path / "config.json"
    kind = "scalar"
    if config.exists():
        kind = json.loads(config.read_text()).get("reward_type", "scalar")
    if kind == "arm":  # GenARM: beta_r * sum_t log pi_r(y_t|x, y<t) (rewards/arm.py)
        from .arm import ArmRewardSource

        return ArmRewardSource(path, arm_beta=spec.get("arm_beta"), **options)
    if spec.get("type") == "preference" or kind == "preference":
        return PreferenceModelSource(path, reference=spec.get("reference"), **options)
    if kind == "multi_objective":
        return MultiObjectiveRewardSource(path, attribute=spec.get("attribute"), **options)
    if kind == "process":
        return ProcessRewardSource(path, aggregate=spec.get("aggregate"), step_split=spec.get("step_split"), **options)
    if kind == "spans":  # Text2Grad's span reward model: token-level rewards (rewards/spans.py)
        from .spans import SpanRewardSource

        return SpanRewardSource(path, token_level=spec.get("token_level", True), **options)
    if kind == "brme":  # K Gaussian heads reduced to a robust reward (rewards/brme.py, docs/pluralistic.md)
        from .brme import BRMERewardSource

        return BRMERewardSource(path, reduce=spec.get("reduce", "robust"), lam=spec.get("lam", 0.5), **options)
    if kind in ("context", "principles"):  # r(condition, x, y) (rewards/conditioned.py)
        from .conditioned import ConditionedRewardSource

        return ConditionedRewardSource(path, condition=spec.get(kind), key=spec.get("key"), **options)
    return RewardModelSource(path, reduce=spec.get("reduce", "mean"), lam=spec.get("lam", 1.0), **options)


def build_reward_source(spec: str | dict[str, Any] | RewardSource) -> RewardSource:
    """A reward source from a name, a path or a mapping (see the module docstring)."""
    if isinstance(spec, RewardSource):
        return spec
    if isinstance(spec, str):
        if spec == "gold" or spec.startswith("gold:"):
            return TaskGoldSource(spec.split(":", 1)[1] if ":" in spec else "sentiment")
        if spec in NAMED_SOURCES:
            return _named_source(spec)
        if Path(spec).exists() or looks_like_hub_id(spec):
            return _model_source(spec, {})
        if is_code_spec(spec):
            return FunctionSource(spec)
        raise ValueError(f"reward source '{spec}': {_not_a_source(spec)}")
    if not isinstance(spec, dict):
        raise TypeError(f"reward source: expected a string or a mapping, got {type(spec).__name__}")
    spec = dict(spec)
    kind = spec.get("type")
    if kind is None:
        kind = "function" if "function" in spec else "model" if "path" in spec else None
    if kind in ("model", "preference", "multi_objective", "process", "spans"):
        return _model_source(spec["path"], spec)
    if kind == "function":
        return FunctionSource(spec.get("function") or spec["path"], spec.get("kwargs"), spec.get("name"))
    if kind == "gold":
        return TaskGoldSource(spec.get("task", "sentiment"))
    if kind == "ensemble":
        return EnsembleSource([build_reward_source(m) for m in spec["members"]], spec.get("reduce", "mean"), spec.get("lam", 1.0))
    if kind == "combine":
        items = spec["sources"]
        sources, weights, refs = [], [], []
        for item in items:
            if isinstance(item, dict) and "source" in item:
                sources.append(build_reward_source(item["source"]))
                weights.append(float(item.get("weight", 1.0)))
                refs.append(float(item.get("reference", 0.0)))
            else:
                sources.append(build_reward_source(item))
                weights.append(1.0)
                refs.append(0.0)
        return CombinedSource(sources, weights, spec.get("transform", "none"), refs, spec.get("params"))
    raise ValueError(f"reward source: unknown type {kind!r}; allowed: model, preference, multi_objective, process, spans, function, gold, ensemble, combine")
