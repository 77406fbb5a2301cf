"""The rollout engine protocol: every generation backend behind one interface, in one registry.

An engine is an object its caller builds, holds and closes (there is no module-global table of
engines):

.. code-block:: python

    engine = build_rollout_engine("alignkit", model, tokenizer)      # or "hf", "vllm", "auto"
    samples = engine.generate(prompts, n=4, job_ids=ids, sampling=Sampling(max_new_tokens=32, seed=0))
    engine.update_from(model)                     # after an optimizer step (a no-op for engines sharing the model)
    engine.update_weights(named_tensors)          # or push (name, tensor) pairs explicitly
    engine.close()                                # or ``with build_rollout_engine(...) as engine:``

:class:`RolloutEngine` is the base every backend derives from; it encodes the prompts the way the data
layer does, checks the job ids, splits the jobs into batches and shows the progress bar, and leaves the
decoding of a batch of jobs to the backend (:meth:`RolloutEngine._generate_batch`). Backends register
with ``@ENGINES.register(name)``; :func:`build_rollout_engine` resolves ``"auto"`` (``"vllm"`` on a CUDA
GPU in one process when vLLM is installed, else ``"alignkit"``) and builds one.
"""

from __future__ import annotations

import abc
import difflib
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

import torch

from ..core.registry import Registry

ENGINES: Registry[type["RolloutEngine"]] = Registry("generation backend")

BACKENDS = ("auto", "alignkit", "hf", "vllm", "vllm_server")


@dataclass
class Sample:
    prompt: Any
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]
    finished: bool
    logprobs: list[float] | None = None  # per completion token (None: hf backend); see docs/rollout.md
    version: int | None = None  # the policy version (training step) whose weights drew the first token; None: not tracked (docs/scale.md)
    resumed: int = 0  # times decoding continued from this sample's prefix under newer weights (partial rollouts)


@dataclass(frozen=True)
class Sampling:
    """How to sample: the settings of one :meth:`RolloutEngine.generate` call.

    ``seed`` names the random streams (``None``: the global RNG); ``truncated_logprobs``: report the
    log-probs of the top-p / top-k truncated, renormalised distribution instead of the full tempered one."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    seed: int | None = 0
    truncated_logprobs: bool = False

    def __post_init__(self):
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling (got {self.temperature}); use greedy=True for argmax decoding")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")

    def with_(self, **changes) -> "Sampling":
        return replace(self, **changes)


def stop_token_ids(tokenizer) -> list[int]:
    """EOS, and the chat template's ``<|end|>`` when the vocabulary has it."""
    ids = [tokenizer.eos_token_id]
    end = tokenizer.convert_tokens_to_ids("<|end|>") if "<|end|>" in tokenizer.get_vocab() else None
    if end is not None and end != tokenizer.unk_token_id:
        ids.append(end)
    return ids


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` [len(rows), longest] of token id rows."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, ids in enumerate(rows):
        input_ids[i, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention[i, width - len(ids) :] = 1
    return input_ids, attention


def cut_at_stop(completion: list[int], stops: Sequence[int]) -> tuple[list[int], bool]:
    """The completion up to and including its first stop token, and whether it had one."""
    for i, token in enumerate(completion):
        if token in stops:
            return completion[: i + 1], True
    return completion, False


Job = tuple[Any, list[int]]  # (the prompt as given, its token ids)


class RolloutEngine(abc.ABC):
    """A generation backend: samples completions, takes new weights, frees its resources.

    Subclasses set :attr:`name` (their registry name), build themselves from ``(model, tokenizer,
    **options)`` and implement :meth:`_generate_batch`, :meth:`update_weights` and (when they hold
    more than a reference to the caller's model) :meth:`update_from` and :meth:`close`.

    :attr:`shares_model` is True for engines that sample from the caller's model object itself (the
    ``alignkit`` and ``hf`` engines by default): they see every optimizer step without any update, and
    :meth:`update_from` the same model is a no-op."""

    name: str = "?"
    shares_model: bool = False
    batch_whole_call: bool = False  # True: the engine schedules its own batches (all jobs in one batch)

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.stops = stop_token_ids(tokenizer)
        self.closed = False

    # ---- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Any] | None = None,
        *,
        prompt_ids: Sequence[Sequence[int]] | None = None,
        n: int = 1,
        job_ids: Sequence[int] | None = None,
        sampling: Sampling | None = None,
        batch_size: int = 64,
        progress: bool = False,
        guide=None,
        **settings,
    ) -> list[Sample]:
        """``n`` samples for each prompt, prompt-major (sample ``i*n + j`` is prompt ``i``'s ``j``-th).

        Give either ``prompts`` (text or chat messages, encoded as the data layer encodes prompts) or
        ``prompt_ids`` (token id lists; then ``Sample.prompt`` is the id list). ``job_ids``: one id per
        job (``len(prompts) * n``) naming its random stream (default ``0 .. jobs - 1``). ``sampling``:
        a :class:`Sampling`; keyword ``settings`` (``max_new_tokens=...``, ``seed=...``) override its
        fields. ``batch_size``: jobs decoded together (engines that schedule their own batches ignore
        it). ``guide``: a decoding guide (:class:`alignkit.rollout.local.Guide`; ``alignkit`` engine only)."""
        if self.closed:
            raise RuntimeError(f"rollout engine {self.name!r} is closed")
        sampling = (sampling or Sampling()).with_(**settings) if settings else (sampling or Sampling())
        if guide is not None and not getattr(self, "takes_guide", False):
            raise ValueError(f"generation backend {self.name!r} takes no guide; use backend 'alignkit'")
        jobs = self.encode_jobs(prompts, prompt_ids, n)
        job_ids = list(range(len(jobs))) if job_ids is None else [int(j) for j in job_ids]
        if len(job_ids) != len(jobs):
            raise ValueError(f"generate: job_ids has {len(job_ids)} ids for {len(jobs)} jobs (prompts x n)")
        from ..core.progress import make_progress

        size = max(1, len(jobs)) if self.batch_whole_call else max(1, batch_size)
        samples: list[Sample] = []
        with self._inference_mode(), make_progress(progress) as bar_progress:
            bar = bar_progress.add_task("generate", total=len(jobs), info="")
            self._begin_call(sampling)
            for start in range(0, len(jobs), size):
                chunk = jobs[start : start + size]
                kwargs = {"guide": guide} if guide is not None else {}
                samples.extend(self._generate_batch(chunk, job_ids[start : start + size], n, sampling, **kwargs))
                bar_progress.update(bar, advance=len(chunk))
        return samples

    def encode_jobs(self, prompts, prompt_ids, n: int) -> list[Job]:
        """One ``(prompt, token ids)`` per job, ``n`` consecutive jobs per prompt."""
        if (prompts is None) == (prompt_ids is None):
            raise ValueError("generate: give exactly one of prompts and prompt_ids")
        if prompt_ids is not None:
            encoded = [(list(ids), [int(t) for t in ids]) for ids in prompt_ids]
        else:
            from ..data.encode import Encoder

            encoder = Encoder(self.tokenizer, max_length=10**9)
            encoded = [(p, encoder.prompt_ids(p)) for p in prompts]
        if any(not ids for _, ids in encoded):
            raise ValueError("generate: a prompt encodes to no tokens")
        return [job for job in encoded for _ in range(n)]

    def _begin_call(self, sampling: Sampling) -> None:
        """Called once per :meth:`generate` call before its first batch (e.g. to seed a global RNG)."""

    @abc.abstractmethod
    def _generate_batch(self, jobs: list[Job], job_ids: list[int], n: int, sampling: Sampling, **kwargs) -> list[Sample]:
        """The samples of a batch of jobs (in order); ``n`` is the group size of the call (jobs come
        in runs of ``n`` per prompt when the engine schedules whole calls)."""

    def _inference_mode(self):
        """A context in which the engine's model is in eval mode (the caller's mode is restored after)."""
        return _EvalMode(self.model)

    def _sample(self, job: Job, completion: list[int], finished: bool, logprobs: list[float] | None) -> Sample:
        prompt, ids = job
        return Sample(prompt, self.tokenizer.decode(completion, skip_special_tokens=True), ids, completion, finished, logprobs)

    # ---- weights ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load ``(name, tensor)`` pairs into the model the engine samples from."""

    @abc.abstractmethod
    def update_from(self, model) -> None:
        """Bring the engine's weights up to ``model``'s when they changed since the last update (a no-op
        for an engine that samples from ``model`` itself)."""

    # ---- resources -------------------------------------------------------------------------------
    def release(self) -> None:
        """Free what can be rebuilt on the next call (caches, KV memory); the engine stays usable."""

    def close(self) -> None:
        """Free everything; the engine cannot generate afterwards. Closing twice is harmless."""
        self.release()
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, shares_model={self.shares_model}, closed={self.closed})"


class ModelEngine(RolloutEngine):
    """An engine that decodes with a torch model in this process: the caller's model itself (the
    default: :attr:`shares_model`, every optimizer step is seen at once and :meth:`update_from` that
    model is a no-op) or, with ``copy=True``, a private deep copy (a frozen snapshot, an opponent, a
    behaviour policy) that :meth:`update_weights` / :meth:`update_from` refresh."""

    def __init__(self, model, tokenizer, copy: bool = False):
        from ..models.weights import unwrap_ddp

        if copy:
            import copy as copying

            model = copying.deepcopy(unwrap_ddp(model)).eval()
            for p in model.parameters():
                p.requires_grad_(False)
        super().__init__(model, tokenizer)
        self.shares_model = not copy
        self._synced: tuple | None = None

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy ``(name, tensor)`` pairs (the model's ``state_dict`` names) into the engine's model in
        place. For an engine sharing the caller's model this writes into that model; feeding it its own
        tensors is a no-op."""
        copy_named_tensors(self.model, named_tensors)
        self._synced = None

    def update_from(self, model) -> None:
        if model is self.model:
            return
        if self.shares_model:
            raise ValueError(f"this {self.name!r} engine samples from another model object (it shares that one); "
                             "build an engine for this model, or one with copy=True to load other weights into")
        from ..models.weights import unwrap_ddp, weights_version

        version = (id(model), weights_version(model))
        if version != self._synced:
            copy_named_tensors(self.model, unwrap_ddp(model).state_dict().items())
            self._synced = version

    def close(self) -> None:
        super().close()
        if not self.shares_model:
            self.model = None  # drop the private copy


class _EvalMode:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        if self.model is not None:
            self.was_training = self.model.training
            self.model.eval()

    def __exit__(self, *exc):
        if self.model is not None:
            self.model.train(self.was_training)


def copy_named_tensors(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Copy ``(name, tensor)`` pairs into ``model``'s parameters and buffers (its ``state_dict`` names),
    in place and without autograd. A tensor that already is the target's storage is skipped (so feeding
    a model its own tensors is a no-op). Unknown names raise. Returns the number of tensors copied."""
    targets = dict(model.state_dict(keep_vars=True))
    copied = 0
    with torch.no_grad():
        for name, tensor in named_tensors:
            if name not in targets:
                close = difflib.get_close_matches(name, list(targets), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise KeyError(f"update_weights: the engine's model has no tensor {name!r}{hint}")
            target = targets[name]
            if target.data_ptr() == tensor.data_ptr() and target.shape == tensor.shape:
                continue
            target.data.copy_(tensor.detach().to(device=target.device, dtype=target.dtype))
            copied += 1
    return copied


def _registered() -> None:
    """Import the built-in backends so that they are registered."""
    from . import hf, local, vllm, vllm_server  # noqa: F401


def engine_names() -> list[str]:
    """Every name :func:`build_rollout_engine` takes: ``"auto"`` and the registered backends."""
    _registered()
    return ["auto", *ENGINES.names()]


def resolve_backend(backend: str, model=None) -> str:
    """The backend ``backend`` stands for: ``"auto"`` is ``"vllm"`` when vLLM is installed and ``model``
    sits on a CUDA GPU in a single process, else ``"alignkit"``. Unknown names raise ``ValueError``
    listing the allowed ones; ``"vllm"`` without vLLM (or under several processes) raises."""
    names = engine_names()
    if backend not in names:
        close = difflib.get_close_matches(str(backend), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown generation backend {backend!r}{hint}; allowed: {', '.join(names)}")
    from .vllm import require_vllm, several_processes, vllm_available

    if backend == "auto":
        on_gpu = model is not None and next(model.parameters()).device.type == "cuda"
        return "vllm" if on_gpu and not several_processes() and vllm_available() else "alignkit"
    if backend == "vllm":
        require_vllm()
    return backend


def build_rollout_engine(name: str, model, tokenizer, *, vllm_options=None, **options) -> RolloutEngine:
    """A new engine of backend ``name`` (``"auto"`` resolved for ``model``) sampling from ``model``.

    ``options`` go to the backend's constructor: ``alignkit`` / ``hf``: ``copy=True`` to sample from a
    private copy of the model (then :meth:`~RolloutEngine.update_weights` / ``update_from`` copy new
    weights into it); ``vllm``: ``options`` (a :class:`~alignkit.config.VLLMConfig`) and ``seed`` (the
    engine's start seed). ``vllm_options`` is the ``options`` of a ``vllm`` engine and ignored by the
    others, so a caller can pass its recipe's ``rl.sampling.vllm`` whatever ``"auto"`` resolves to. The caller
    holds the engine and closes it."""
    resolved = resolve_backend(name, model)
    if resolved in ("vllm", "vllm_server") and vllm_options is not None:
        options.setdefault("options", vllm_options)
    return ENGINES.get(resolved)(model, tokenizer, **options)
