"""Sampling completions from a causal LM: the one-shot front door :func:`generate` over the rollout
engines (:mod:`alignkit.rollout.engine`), and :func:`sample_logprobs`.

Prompts are encoded exactly as the data layer encodes them (plain text without special tokens, or the
chat template with the generation prompt). Each sample keeps its prompt and completion token ids, so its
log-probs can be recomputed exactly by the trainer's kernel (the completion ids include the stop token
when one was produced, matching the training convention that EOS is a target). Rows stop at EOS (or the
chat template's end-of-turn token).

Backends (``generate(..., backend=...)``), each a registered engine:

* ``"alignkit"`` (default, :mod:`alignkit.rollout.local`): alignkit's KV-cache decoder. Exact (greedy
  output is token-for-token that of ``model.generate``), each prompt prefilled once for its ``n``
  samples, finished rows leave the batch. ``Sample.logprobs`` are ``log softmax(logits / T)[token]``
  (the trainer's :class:`~alignkit.models.logprobs.TargetLogProbs` convention; top-p / top-k truncation
  is reflected only with ``truncated_logprobs=True``). Deterministic by ``seed`` and independent of
  batching: job ``j``'s draws at step ``t`` come from the splitmix64 stream of ``(seed, job id, t)``.
  ``seed=None`` draws from the global RNG. Takes a ``guide`` (see :class:`~alignkit.rollout.local.Guide`).
* ``"hf"`` (:mod:`alignkit.rollout.hf`): ``model.generate``; ``Sample.logprobs`` is ``None``.
* ``"vllm"`` (:mod:`alignkit.rollout.vllm`): a vLLM engine mirroring the model. Without ``engine=`` an
  engine is built for the call and closed after it; a caller sampling repeatedly (online RL) builds one
  with :func:`~alignkit.rollout.engine.build_rollout_engine`, passes it as ``engine=`` (its weights are
  brought up to ``model``'s first, copied only when they changed) and closes it.
* ``"auto"``: ``"vllm"`` when vLLM is installed and the model is on a CUDA GPU in a single process,
  otherwise ``"alignkit"``.

Plain-text prompts and the chat template (``generate(..., chat_template=...)``, ``alignkit generate
--no-chat-template``): a chat model given raw text often answers nothing (SmolLM2-135M-Instruct returns an
empty completion for "What is the capital of France?"), so with ``chat_template="auto"`` (the default of
``alignkit generate`` and ``alignkit eval --data``) a prompt given as a string is wrapped as one user
message and rendered with the tokenizer's chat template and its generation prompt, when the tokenizer has a
chat template. The Python default is ``False``: the training loops (online RL, iterative rounds, pair
building) sample plain-text prompts as raw text, as the data layer encodes them for training (and as TRL
does), so that what is sampled is what is trained; give prompts as message lists for the template. ``True`` always wraps (an error when
the tokenizer has no template), ``False`` keeps the raw text (tokens of the text, no special tokens). The
tiny models' tokenizer carries a template only for conversational data: the tiny models are trained on
plain-text tasks, so ``"auto"`` keeps raw text for it (:func:`wraps_plain_prompts`). Prompts given as
message lists are always rendered with the template. ``Sample.prompt`` stays the prompt as the caller
gave it (the text); ``Sample.prompt_ids`` are the tokens the model saw.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.collate import collate_sequences
from ..models.logprobs import TargetLogProbs
from .engine import BACKENDS, RolloutEngine, Sample, Sampling, build_rollout_engine, resolve_backend, stop_token_ids
from .local import Sampler, _Sampler, splitmix64, uniform_stream  # noqa: F401  (the names of this module before the engines)

__all__ = ["BACKENDS", "CHAT_TEMPLATE_CHOICES", "Sample", "as_chat_prompts", "generate", "resolve_backend", "sample_logprobs",
           "stop_token_ids", "wraps_plain_prompts"]

CHAT_TEMPLATE_CHOICES = ("auto", True, False)


def wraps_plain_prompts(tokenizer, chat_template: bool | str = "auto") -> bool:
    """Whether a plain-text prompt is wrapped as a user message and rendered with ``tokenizer``'s chat
    template: ``True`` (the tokenizer must have a template), ``False``, or ``"auto"``: when the tokenizer
    has a chat template other than the tiny models' (whose models learn plain-text tasks)."""
    if chat_template not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"chat_template: got {chat_template!r}; allowed: 'auto', True, False")
    template = getattr(tokenizer, "chat_template", None)
    if chat_template is True:
        if not template:
            raise ValueError("chat_template=True: the tokenizer has no chat template (use chat_template=False for raw text)")
        return True
    if chat_template is False or not template:
        return False
    from ..models.tiny import CHAT_TEMPLATE as TINY_TEMPLATE

    return template != TINY_TEMPLATE


def as_chat_prompts(tokenizer, prompts: list[Any], chat_template: bool | str = "auto") -> list[Any]:
    """``prompts`` with each plain-text prompt as ``[{"role": "user", "content": text}]`` when
    :func:`wraps_plain_prompts`; message lists are left as they are."""
    if not wraps_plain_prompts(tokenizer, chat_template):
        return list(prompts)
    return [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[Any],
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    batch_size: int = 64,
    seed: int | None = 0,
    progress: bool = False,
    backend: str = "alignkit",
    truncated_logprobs: bool = False,
    vllm_options=None,
    job_ids: list[int] | None = None,
    engine: RolloutEngine | None = None,
    guide=None,
    chat_template: bool | str = False,
) -> list[Sample]:
    """``n`` samples for each prompt, grouped by prompt (sample ``i*n + j`` is prompt ``i``'s j-th).

    ``batch_size`` is the number of samples decoded together (``"vllm"`` schedules its own batches).
    ``backend``: ``"alignkit"`` (default), ``"hf"`` (``model.generate``), ``"vllm"`` or ``"auto"``; see
    the module docstring. ``vllm_options``: :class:`~alignkit.config.VLLMConfig` of the engine built for
    this call. ``job_ids``: one id per job (``len(prompts) * n``) naming its random stream (default
    ``0 .. len(jobs) - 1``). ``engine``: an engine the caller holds (``backend`` and ``vllm_options`` are
    then ignored); it is updated from ``model`` first (a no-op when it samples from ``model`` itself) and
    left open. ``guide``: a :class:`~alignkit.rollout.local.Guide` (``alignkit`` backend only).
    ``chat_template``: ``False`` (default), ``"auto"`` or ``True``: whether plain-text prompts are rendered
    as a user message with the chat template (the module docstring; :func:`wraps_plain_prompts`).
    """
    originals = list(prompts)
    prompts = as_chat_prompts(tokenizer, originals, chat_template)
    owned = engine is None
    if owned:
        name = resolve_backend(backend, model)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy,
                        seed=seed, truncated_logprobs=truncated_logprobs)
    if owned:
        options = {"options": vllm_options, "seed": 0 if seed is None else seed} if name == "vllm" else {}
        engine = build_rollout_engine(name, model, tokenizer, **options)
    else:
        engine.update_from(model)
    try:
        samples = engine.generate(prompts, n=n, job_ids=job_ids, sampling=sampling, batch_size=batch_size, progress=progress, guide=guide)
    finally:
        if owned:
            engine.close()
    for i, s in enumerate(samples):  # the prompt as the caller gave it; prompt_ids hold its rendering
        s.prompt = originals[i // n]
    return samples


@torch.no_grad()
def sample_logprobs(model, samples: list[Sample], pad_id: int, batch_size: int = 64, temperature: float = 1.0) -> torch.Tensor:
    """Summed completion log-probs [N] of ``samples`` under ``model`` (the trainer's convention)."""
    module = TargetLogProbs(model, temperature)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        ids = [s.prompt_ids + s.completion_ids for s in chunk]
        masks = [[0] * len(s.prompt_ids) + [1] * len(s.completion_ids) for s in chunk]
        batch = collate_sequences(ids, masks, pad_id)
        logps = module(batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["loss_mask"].to(device))
        out.append(logps.sum(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)
