"""alignkit's own decoder: a public decode loop with a guide hook, KV-cache fork/select, and the
``"alignkit"`` rollout engine.

The loop (:func:`decode`) runs the model's own forward with a ``transformers``
:class:`~transformers.DynamicCache`:

* **Shared prompt prefill.** The jobs are grouped by prompt (the ``n`` samples of a prompt, and identical
  prompts): each unique prompt is run through the model once, then its cache rows are repeated for every
  job of it (``Cache.batch_select_indices`` with repeated indices).
* **Finished rows leave the batch.** When a row emits a stop token it is dropped from the cache, the
  attention mask and the inputs, so later steps compute only the active rows; left padding that no active
  row needs any more is cut from the cache too.
* Left-padded prompts with ``position_ids = attention_mask.cumsum(-1) - 1`` (as ``model.generate``); only
  the last position's logits are computed. Greedy output is token-for-token that of ``model.generate``.
* **Random streams independent of batching.** Job ``j``'s uniform number at decode step ``t`` is the
  splitmix64 stream of a key made from ``(seed, job id, t)`` (:class:`Sampler`), and its token is drawn by
  inverse CDF, so a sample does not depend on which other jobs share its batch.

**Guide hook.** A :class:`Guide` sees, at every step, the logits of the active rows and a
:class:`StepState` (step index, the active rows' job indices and job ids, their prompt and completion
tokens so far, the tokens sampled at the previous step) and returns the logits to sample from. It is told
when the prompts are prefilled (:meth:`Guide.prefill`) and when rows leave the batch
(:meth:`Guide.select`, with the indices of the rows kept, in order), so it can carry its own KV cache in
lockstep, e.g. a :class:`DecodeState` of a second model (see ``docs/rollout.md``).

**Fork / select for tree search.** :class:`DecodeState` bundles a cache with its attention mask, next
positions and last logits; :meth:`DecodeState.fork` repeats every row ``k`` times
(``Cache.batch_repeat_interleave``) and :meth:`DecodeState.select` keeps / reorders / repeats rows
(``Cache.batch_select_indices``); :func:`fork_cache` / :func:`select_cache` do the same on a bare cache.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch

from ..models.precision import cast_parameters
from .engine import ENGINES, Job, ModelEngine, Sample, Sampling, left_pad

# --------------------------------------------------------------------------------------------------
# batch-independent random streams
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


class Sampler:
    """Picks the next token of every row from last-position logits; returns (tokens, log-probs).

    With a ``seed``, row ``r``'s draws at decode step ``step`` come from the key ``(seed, job id, step)`` alone
    (:func:`uniform_stream`), so they do not depend on which rows share the batch; ``seed=None`` uses the
    global RNG. Log-probs are ``log softmax(logits / temperature)[token]`` (of the truncated, renormalised
    distribution with ``truncated_logprobs``)."""

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
                 truncated_logprobs: bool = False, seed: int | None = 0):
        self.temperature = temperature if temperature > 0 else 1.0
        self.top_p, self.top_k, self.greedy = top_p, top_k, greedy
        self.truncated = truncated_logprobs
        self.seed = seed

    @classmethod
    def from_settings(cls, sampling: Sampling) -> "Sampler":
        return cls(sampling.temperature, sampling.top_p, sampling.top_k, sampling.greedy, sampling.truncated_logprobs, sampling.seed)

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


_Sampler = Sampler  # the name before the engine protocol


# --------------------------------------------------------------------------------------------------
# the model's forward, and KV-cache state with fork / select
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    """The name a model class's ``forward`` takes its KV cache under: ``cache`` in recent transformers
    releases (5.24 warns about ``past_key_values``), ``past_key_values`` in earlier ones (5.19)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:]) if args and torch.is_tensor(args[0]) else None


def forward_last(model, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
    """The last position's logits [rows, vocab] of one cached forward (the cache is extended in place).

    With several positions per row (a prefill), ``logits_to_keep=1`` hands the output head a strided
    ``[rows, 1, hidden]`` view; ``F.linear`` cannot fold that into one matrix product and multiplies it as a
    batched product against the weight expanded to ``[rows, hidden, vocab]``: 2.2 s per prefill of 32 rows at
    SmolLM2's 49k vocabulary in bf16 (``benchmarks/README.md``). A forward pre-hook on the output
    embedding makes the head's input contiguous for that call, so it is one ``[rows, hidden] x [hidden, vocab]``
    product, whatever the model class does after the head (soft-capping, scaling)."""
    hook = None
    if input_ids.shape[1] > 1 and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
        if isinstance(head, torch.nn.Module):
            hook = head.register_forward_pre_hook(_contiguous_input)
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    **{_cache_argument(type(model)): cache}, use_cache=True, logits_to_keep=1)
    finally:
        if hook is not None:
            hook.remove()
    return out.logits[:, -1]


def fork_cache(cache, k: int):
    """Repeat every row of ``cache`` ``k`` times, in place (rows ``r*k .. r*k + k-1`` are copies of row
    ``r``): ``Cache.batch_repeat_interleave``. Returns the cache."""
    cache.batch_repeat_interleave(int(k))
    return cache


def select_cache(cache, indices: torch.Tensor | Sequence[int]):
    """Keep the rows ``indices`` of ``cache``, in that order, in place (indices may repeat, which forks
    those rows): ``Cache.batch_select_indices``. Returns the cache."""
    if not torch.is_tensor(indices):
        indices = torch.tensor(list(indices), dtype=torch.long)
    cache.batch_select_indices(indices)
    return cache


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


@dataclass
class DecodeState:
    """A batch being decoded: the KV cache, its attention mask [rows, width] (left padding is 0), the
    position of every row's next token [rows] and the last logits [rows, vocab] (``None`` once used).

    Built by :func:`prefill`; :meth:`advance` feeds one token per row; :meth:`select` / :meth:`fork`
    rearrange the rows (cache, mask, positions and logits together)."""

    cache: Any
    attention: torch.Tensor
    next_pos: torch.Tensor
    logits: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return int(self.attention.shape[0])

    def advance(self, model, tokens: torch.Tensor) -> torch.Tensor:
        """Run ``tokens`` [rows] (one per row) through ``model``; returns (and keeps) the next logits."""
        self.attention = torch.cat([self.attention, self.attention.new_ones(self.attention.shape[0], 1)], dim=1)
        self.logits = forward_last(model, tokens[:, None], self.attention, self.next_pos[:, None], self.cache)
        self.next_pos = self.next_pos + 1
        return self.logits

    def select(self, indices: torch.Tensor | Sequence[int], trim: bool = True) -> "DecodeState":
        """Keep rows ``indices`` in that order (repeats fork rows); with ``trim``, cut cache columns that are
        padding for every remaining row. In place; returns self."""
        if not torch.is_tensor(indices):
            indices = torch.tensor(list(indices), dtype=torch.long)
        indices = indices.to(self.attention.device)
        select_cache(self.cache, indices)
        self.attention, self.next_pos = self.attention[indices], self.next_pos[indices]
        if self.logits is not None:
            self.logits = self.logits[indices]
        if trim:
            self.attention = _trim_left(self.cache, self.attention)
        return self

    def fork(self, k: int) -> "DecodeState":
        """Repeat every row ``k`` times (row ``r`` becomes rows ``r*k .. r*k + k-1``). In place; returns self."""
        fork_cache(self.cache, k)
        self.attention = self.attention.repeat_interleave(k, dim=0)
        self.next_pos = self.next_pos.repeat_interleave(k, dim=0)
        if self.logits is not None:
            self.logits = self.logits.repeat_interleave(k, dim=0)
        return self


def prefill(model, prompt_ids: Sequence[Sequence[int]], pad_id: int = 0) -> DecodeState:
    """Run the prompts (one row each, left-padded) through ``model`` with a new ``DynamicCache``. Identical
    prompts are run once and their cache rows repeated, so row ``i`` of the state is ``prompt_ids[i]``."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    unique: dict[tuple[int, ...], int] = {}
    row_of_job = [unique.setdefault(tuple(ids), len(unique)) for ids in prompt_ids]
    input_ids, attention = left_pad([list(k) for k in unique], pad_id)
    input_ids, attention = input_ids.to(device), attention.to(device)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = forward_last(model, input_ids, attention, position_ids, cache)
    if len(unique) != len(row_of_job) or row_of_job != list(range(len(row_of_job))):
        select = torch.tensor(row_of_job, dtype=torch.long, device=device)
        cache.batch_select_indices(select)
        logits = logits.index_select(0, select)
        attention = attention.index_select(0, select)
    return DecodeState(cache, attention, attention.sum(-1), logits)


# --------------------------------------------------------------------------------------------------
# the guide hook
# --------------------------------------------------------------------------------------------------
class StepState:
    """What a :class:`Guide` sees at one decode step (for the rows still decoding, in batch order).

    ``step``: the index of the token about to be sampled (0 = first completion token). ``rows``: the job
    index (position in this :func:`decode` call) of every active row [active]. ``active``: bool [jobs],
    which jobs are still decoding. ``job_ids``: the active rows' stream ids. ``prompt_ids``: their prompts.
    ``completion``: their tokens so far [active, step]. ``last_tokens``: the tokens sampled at the previous
    step [active] (``None`` at step 0): what a guide carrying its own KV cache feeds its model.
    :meth:`prefixes`: prompt + completion so far, as id lists."""

    def __init__(self, step: int, rows: torch.Tensor, n_jobs: int, all_job_ids: list[int], all_prompt_ids: list[list[int]],
                 tokens_out: torch.Tensor, last_tokens: torch.Tensor | None):
        self.step, self.rows, self.last_tokens = step, rows, last_tokens
        self._n_jobs, self._job_ids, self._prompts, self._tokens = n_jobs, all_job_ids, all_prompt_ids, tokens_out

    @functools.cached_property
    def _row_list(self) -> list[int]:
        return self.rows.tolist()

    @functools.cached_property
    def active(self) -> torch.Tensor:
        mask = torch.zeros(self._n_jobs, dtype=torch.bool, device=self.rows.device)
        mask[self.rows] = True
        return mask

    @functools.cached_property
    def job_ids(self) -> list[int]:
        return [self._job_ids[r] for r in self._row_list]

    @functools.cached_property
    def prompt_ids(self) -> list[list[int]]:
        return [self._prompts[r] for r in self._row_list]

    @functools.cached_property
    def completion(self) -> torch.Tensor:
        return self._tokens[self.rows, : self.step]

    def prefixes(self) -> list[list[int]]:
        """Every active row's tokens so far: its prompt followed by its completion so far."""
        return [p + c for p, c in zip(self.prompt_ids, self.completion.tolist())]


class Guide:
    """A decoding guide: modifies the logits at every step, seeing the decoding state.

    The base class is the identity guide. Override :meth:`__call__` (and, to carry state per row such as
    a KV cache, :meth:`prefill` and :meth:`select`). Order within :func:`decode`: ``prefill`` once after the
    prompts are prefilled; then at every step ``__call__(logits, state)`` before sampling; after a step in
    which rows finished, ``select(kept)`` with the indices (into the rows of that step) of the rows that
    continue, in order; ``finish()`` at the end."""

    def prefill(self, state: StepState) -> None:
        """Called once before step 0; ``state.rows`` is every job, ``state.prompt_ids`` their prompts."""

    def select(self, indices: torch.Tensor) -> None:
        """Rows left the batch: keep rows ``indices`` of the previous step's batch, in that order."""

    def __call__(self, logits: torch.Tensor, state: StepState) -> torch.Tensor:
        """The logits [active, vocab] to sample from (return ``logits`` unchanged for no effect)."""
        return logits

    def finish(self) -> None:
        """Decoding is over (free any cache)."""


class Decoded(NamedTuple):
    completion_ids: list[int]  # including the stop token when one was produced
    finished: bool  # stopped at a stop token (not at max_new_tokens)
    logprobs: list[float]  # per completion token, see Sampler


@torch.no_grad()
def decode(model, prompt_ids: Sequence[Sequence[int]], job_ids: Sequence[int] | None, sampler: Sampler, max_new_tokens: int,
           stops: Sequence[int], guide: Guide | None = None, pad_id: int = 0) -> list[Decoded]:
    """Decode one completion per job (``prompt_ids[j]``, random stream ``job_ids[j]``; default ``0..``) with
    the shared-prefill, compacting KV-cache loop of the module docstring; ``guide`` (optional) modifies the
    logits at every step. The caller puts ``model`` in eval mode."""
    prompts = [list(ids) for ids in prompt_ids]
    job_ids = list(range(len(prompts))) if job_ids is None else [int(j) for j in job_ids]
    if len(job_ids) != len(prompts):
        raise ValueError(f"decode: {len(job_ids)} job ids for {len(prompts)} prompts")
    if not prompts:
        return []
    state = prefill(model, prompts, pad_id)
    device = state.attention.device
    rows = len(prompts)
    tokens_out = torch.zeros(rows, max_new_tokens, dtype=torch.long, device=device)
    logps_out = torch.zeros(rows, max_new_tokens, dtype=torch.float32, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    finished_rows = torch.zeros(rows, dtype=torch.bool, device=device)
    active = torch.arange(rows, device=device)  # job index of every row still decoding
    stop_ids = torch.tensor(list(stops), dtype=torch.long, device=device)
    keys = sampler.job_keys(job_ids, device)  # the random stream of every row (follows compaction)
    if guide is not None:
        guide.prefill(StepState(0, active, rows, job_ids, prompts, tokens_out, None))
    tokens = None
    try:
        for step in range(max_new_tokens):
            logits, state.logits = state.logits, None
            if guide is not None:
                logits = guide(logits, StepState(step, active, rows, job_ids, prompts, tokens_out, tokens))
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
                active, tokens = active[keep], tokens[keep]
                keys = keys[keep] if keys is not None else None
                state.select(keep)
                if guide is not None:
                    guide.select(keep)
            state.advance(model, tokens)
    finally:
        if guide is not None:
            guide.finish()
    tokens_list, logps_list = tokens_out.tolist(), logps_out.tolist()
    lengths_list, finished_list = lengths.tolist(), finished_rows.tolist()
    return [Decoded(tokens_list[j][: lengths_list[j]], finished_list[j], logps_list[j][: lengths_list[j]]) for j in range(rows)]


class CachedModelGuide(Guide):
    """A guide that adds ``weight`` times a second model's log-probs to the logits (a product of experts),
    the second model's KV cache kept in lockstep with the batch (:class:`DecodeState`: prefilled with the
    prompts, advanced with the tokens sampled, rows selected as they finish). A worked example of the
    hook, and a building block (e.g. a small guide model steering a policy)."""

    def __init__(self, model, weight: float = 1.0, pad_id: int = 0):
        self.model, self.weight, self.pad_id = model, weight, pad_id
        self.state: DecodeState | None = None

    def prefill(self, state: StepState) -> None:
        self.state = prefill(self.model, state.prompt_ids, self.pad_id)

    def select(self, indices: torch.Tensor) -> None:
        self.state.select(indices)

    def __call__(self, logits: torch.Tensor, state: StepState) -> torch.Tensor:
        guide_logits = self.state.logits if state.last_tokens is None else self.state.advance(self.model, state.last_tokens)
        return logits + self.weight * torch.log_softmax(guide_logits.float(), -1).to(logits.dtype)

    def finish(self) -> None:
        self.state = None


class MixtureGuide(CachedModelGuide):
    """The geometric mixture of the policy and a second model ``pi_ref``: per token
    ``log p(v) = (1 - coef) log pi(v) + coef log pi_ref(v) + const`` (Nash-MD's ``pi^(1-beta) pi_ref^beta``,
    normalised token by token as Munos et al. 2023 sample it), ``pi_ref``'s KV cache in lockstep."""

    def __init__(self, model, coef: float, pad_id: int = 0):
        if not 0.0 <= coef <= 1.0:
            raise ValueError(f"mixture coefficient must be in [0, 1]; got {coef}")
        super().__init__(model, coef, pad_id)

    def __call__(self, logits: torch.Tensor, state: StepState) -> torch.Tensor:
        other = self.state.logits if state.last_tokens is None else self.state.advance(self.model, state.last_tokens)
        mixed = (1.0 - self.weight) * torch.log_softmax(logits.float(), -1) + self.weight * torch.log_softmax(other.float(), -1)
        return mixed.to(logits.dtype)


# --------------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------------
@ENGINES.register("alignkit")
class LocalEngine(ModelEngine):
    """alignkit's KV-cache decoder (:func:`decode`) as a rollout engine. Exact (greedy = ``model.generate``),
    per-token log-probs in the trainer's convention, random streams independent of batching, and a
    ``guide`` argument to :meth:`generate`. Samples from the caller's model (or a copy, ``copy=True``)."""

    name = "alignkit"
    takes_guide = True

    def __init__(self, model, tokenizer, copy: bool = False, dtype: torch.dtype | None = None):
        """``dtype`` (e.g. ``torch.bfloat16``): decode from a private copy of the model held in that dtype,
        refreshed (and cast) from the caller's model by :meth:`update_from` whenever its weights change. A
        decode step is bound by the weights it reads; on this machine's AMX-BF16 cores a bf16 copy decodes
        SmolLM2 about 1.7x faster than fp32 weights (``benchmarks/README.md``). The samples then come from
        the bf16-rounded policy: their log-probs (``Sample.logprobs``) are that policy's, which is what the
        off-policy corrections take as the behaviour policy; the update's ``old_logp`` is still the trainer's."""
        cast = dtype is not None and any(p.dtype != dtype for p in model.parameters() if p.is_floating_point())
        super().__init__(model, tokenizer, copy=copy or cast)
        if cast:  # parameters only: buffers such as RoPE's inv_freq stay fp32
            cast_parameters(self.model, dtype)
        self.dtype = dtype

    def _generate_batch(self, jobs: list[Job], job_ids: list[int], n: int, sampling: Sampling, guide: Guide | None = None) -> list[Sample]:
        out = decode(self.model, [ids for _, ids in jobs], job_ids, Sampler.from_settings(sampling), sampling.max_new_tokens,
                     self.stops, guide=guide, pad_id=self.tokenizer.pad_token_id)
        return [self._sample(job, d.completion_ids, d.finished, d.logprobs) for job, d in zip(jobs, out)]
