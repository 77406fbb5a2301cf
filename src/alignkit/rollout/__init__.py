"""Sampling completions: :func:`generate` (backends ``alignkit``, ``hf``, ``vllm``) and scoring helpers."""

from .generate import BACKENDS, Sample, generate, sample_logprobs, stop_token_ids

__all__ = ["BACKENDS", "Sample", "generate", "sample_logprobs", "stop_token_ids"]
