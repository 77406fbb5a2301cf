"""Sampling completions: rollout engines behind one protocol (:mod:`.engine`; backends ``alignkit``,
``hf``, ``vllm`` in a registry), alignkit's decode loop with its guide hook (:mod:`.local`), the one-shot
front door :func:`generate`, and scoring helpers."""

from .engine import (
                     BACKENDS,
                     ENGINES,
                     ModelEngine,
                     RolloutEngine,
                     Sample,
                     Sampling,
                     build_rollout_engine,
                     engine_names,
                     resolve_backend,
                     stop_token_ids,
)
from .generate import generate, sample_logprobs
from .hf import HFEngine
from .local import CachedModelGuide, Decoded, DecodeState, Guide, LocalEngine, Sampler, StepState, decode, fork_cache, prefill, select_cache
from .vllm import VLLMEngine

__all__ = [
    "BACKENDS", "ENGINES", "CachedModelGuide", "DecodeState", "Decoded", "Guide", "HFEngine", "LocalEngine", "ModelEngine",
    "RolloutEngine", "Sample", "Sampler", "Sampling", "StepState", "VLLMEngine", "build_rollout_engine", "decode", "engine_names",
    "fork_cache", "generate", "prefill", "resolve_backend", "sample_logprobs", "select_cache", "stop_token_ids",
]
