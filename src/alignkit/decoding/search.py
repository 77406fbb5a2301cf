"""Search over continuations on the KV cache's fork / select (:class:`~alignkit.rollout.local.DecodeState`).

* ``lookahead`` (DeAL, Huang et al. 2024, "DeAL: Decoding-time Alignment for Large Language Models"): at every
  decision point each row's top-``k`` next tokens are forked, each fork is extended ``depth`` tokens greedily
  (the lookahead), and the candidate whose lookahead text scores highest on the heuristic
  ``h = reward + keyword + length`` (+ ``lm_weight`` times the fork's log-probability, which breaks ties) is
  taken; the first ``commit`` tokens of the winning fork are kept and the cache is cut back to them. The
  heuristic is a reward source and / or programmatic constraints: ``keywords`` (the share of them present)
  and ``length`` (a target length in tokens: ``-|len - L| / L`` once finished, ``-max(0, len - L) / L`` before).
* ``w2s`` (weak-to-strong search, Zhou et al. 2024, chunk-level beam search): ``beams`` beams per output; each
  samples ``expand`` chunks of ``chunk`` tokens from the (large) base model, every candidate is scored by the
  implicit reward of a small tuned / untuned pair ``log pi_tuned(y|x) - log pi_untuned(y|x)`` of the whole
  partial output, and the best ``beams`` are kept. The small models' caches are forked, advanced with the
  base model's tokens and selected with the beams: nothing is run twice.

Both are deterministic selections (no sampled ``logprobs`` of their own; their KL is not reported).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..rollout.local import DecodeState, Sampler, prefill
from .base import STRATEGIES, Context, Decoding
from .guided import as_list, check_backend, load_guides


def drop_last(state: DecodeState, n: int) -> DecodeState:
    """Remove the last ``n`` positions from ``state``'s cache and attention mask (a plain full-attention
    ``DynamicCache``), rolling the rows back ``n`` tokens; the logits are left to the caller. In place."""
    if n <= 0:
        return state
    from transformers.cache_utils import DynamicLayer

    layers = getattr(state.cache, "layers", [])
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        raise ValueError("lookahead search needs a plain full-attention DynamicCache to roll back")
    for layer in layers:
        layer.keys, layer.values = layer.keys[:, :, :-n], layer.values[:, :, :-n]
    state.attention, state.next_pos = state.attention[:, :-n], state.next_pos - n
    return state


def constraint_scores(completions: Sequence[str], lengths: Sequence[int], finished: Sequence[bool], keywords: Sequence[str] | None,
                      length: int | None) -> torch.Tensor:
    """The programmatic part of the lookahead heuristic, per text: the share of ``keywords`` present (as words)
    plus the length term (see the module docstring); 0 for an unset constraint."""
    out = torch.zeros(len(completions))
    for i, (text, n, done) in enumerate(zip(completions, lengths, finished)):
        if keywords:
            words = set(text.split())
            out[i] += sum(k in words for k in keywords) / len(keywords)
        if length:
            out[i] -= (abs(n - length) if done else max(0, n - length)) / length
    return out


class _Rows:
    """Per-row token lists, finished flags and the prompt of every row (beams / forks of the jobs)."""

    def __init__(self, prompts: list[Any], prompt_ids: list[list[int]]):
        self.prompts, self.prompt_ids = prompts, prompt_ids
        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.done = [False] * len(prompts)

    def take(self, index: Sequence[int]) -> "_Rows":
        out = _Rows([self.prompts[i] for i in index], [self.prompt_ids[i] for i in index])
        out.tokens = [list(self.tokens[i]) for i in index]
        out.done = [self.done[i] for i in index]
        return out


@torch.no_grad()
def _lookahead_batch(ctx: Context, jobs: list[tuple[Any, list[int]]], score, k: int, depth: int, commit: int, lm_weight: float,
                     stops: set[int], produced: list[int]) -> list[tuple[list[int], bool]]:
    """One batch of lookahead search; ``produced[0]`` counts every token the forks generated."""
    model, tok = ctx.model, ctx.tokenizer
    state = prefill(model, [ids for _, ids in jobs], ctx.pad_id)
    rows = _Rows([p for p, _ in jobs], [ids for _, ids in jobs])
    out: dict[int, tuple[list[int], bool]] = {}
    alive = list(range(len(jobs)))  # job index of every row of ``state``
    budget = ctx.sampling.max_new_tokens
    while alive:
        n, kk = len(alive), min(k, state.logits.shape[-1])
        logp0 = torch.log_softmax(state.logits.float(), -1)
        cand_logp, cand = logp0.topk(kk, dim=-1)  # [n, k]
        state.fork(kk)
        forks = rows.take([r for r in range(n) for _ in range(kk)])
        fork_logp = cand_logp.reshape(-1).clone()
        steps, logits_after = [], []
        next_tokens = cand.reshape(-1)
        for d in range(depth + 1):
            for f, t in enumerate(next_tokens.tolist()):
                if not forks.done[f] and len(forks.tokens[f]) < budget:
                    forks.tokens[f].append(t)
                    forks.done[f] = t in stops
                    produced[0] += 1
            steps.append(next_tokens)
            if d == depth:
                break
            logits = state.advance(model, next_tokens)
            logits_after.append(logits)
            step_logp = torch.log_softmax(logits.float(), -1)
            next_tokens = step_logp.argmax(-1)
            live = torch.tensor([not forks.done[f] and len(forks.tokens[f]) < budget for f in range(len(forks.done))], device=step_logp.device)
            fork_logp = fork_logp + torch.where(live, step_logp.max(-1).values, torch.zeros_like(fork_logp))
        texts = [tok.decode(t, skip_special_tokens=True) for t in forks.tokens]
        h = score(forks.prompts, texts, [len(t) for t in forks.tokens], forks.done) + lm_weight * fork_logp.cpu()
        best = h.view(n, kk).argmax(-1)
        chosen = (torch.arange(n) * kk + best).tolist()
        keep_tokens = min(commit, depth + 1)
        # commit the first ``keep_tokens`` tokens of each winning fork and roll its cache back to them
        state.select(torch.tensor(chosen), trim=False)
        fed = len(logits_after)  # tokens of every fork already run through the model (depth)
        drop_last(state, fed - keep_tokens if keep_tokens <= fed else 0)
        state.logits = logits_after[keep_tokens - 1][chosen] if keep_tokens <= fed else None
        next_alive, keep_rows = [], []
        new_rows = rows.take(range(n))
        for r in range(n):
            f = chosen[r]
            prefix = forks.tokens[f][: len(rows.tokens[r]) + keep_tokens]
            new_rows.tokens[r] = prefix
            new_rows.done[r] = any(t in stops for t in prefix[len(rows.tokens[r]):])
            finished = new_rows.done[r] or len(prefix) >= budget
            if finished:
                out[alive[r]] = (prefix, new_rows.done[r])
            else:
                next_alive.append(alive[r])
                keep_rows.append(r)
        if not next_alive:
            break
        if state.logits is None:  # the whole fork was committed: run its last token
            last = torch.tensor([new_rows.tokens[r][-1] for r in range(n)])
            state.advance(model, last.to(state.attention.device))
        if len(keep_rows) < n:
            state.select(torch.tensor(keep_rows))
        rows, alive = new_rows.take(keep_rows), next_alive
    return [out[j] for j in range(len(jobs))]


@STRATEGIES.register("lookahead", family="search", paper="Huang et al. 2024, DeAL")
def lookahead(ctx: Context, reward=None, keywords=None, length: int | None = None, k: int = 4, depth: int = 4, commit: int = 1,
              w: float = 1.0, lm_weight: float = 0.1) -> Decoding:
    """DeAL-style lookahead search: top-``k`` candidates, each extended ``depth`` tokens greedily and scored by
    ``w * reward + keywords + length`` (+ ``lm_weight`` x the fork's log-prob); the best fork's first
    ``commit`` tokens are kept. ``reward``: a reward source spec (optional); ``keywords``: a list of words;
    ``length``: a target length in tokens. One of the three is needed."""
    check_backend(ctx, "lookahead")
    if reward is None and not keywords and not length:
        raise ValueError("lookahead: give a heuristic: reward=SPEC, keywords=[...] and/or length=N")
    if k < 1 or depth < 0 or commit < 1:
        raise ValueError(f"lookahead: k >= 1, depth >= 0 and commit >= 1 (got k={k}, depth={depth}, commit={commit})")
    source = ctx.reward(reward) if reward is not None else None
    words = [str(x) for x in as_list(keywords, "keywords", "lookahead")] if keywords else None

    def score(prompts, texts, lengths, done):
        h = constraint_scores(texts, lengths, done, words, length)
        if source is not None:
            h = h + w * source.score(prompts, texts).cpu()
        return h

    ids = ctx.prompt_ids()
    jobs = [(p, i) for p, i in zip(ctx.prompts, ids) for _ in range(ctx.n)]
    stops = set(ctx.stops)
    samples, produced = [], [0]
    for start in range(0, len(jobs), max(1, ctx.batch_size)):
        chunk = jobs[start : start + ctx.batch_size]
        for (prompt, prompt_ids), (tokens, done) in zip(chunk, _lookahead_batch(ctx, chunk, score, k, depth, commit, lm_weight, stops, produced)):
            samples.append(ctx.make_sample(prompt, prompt_ids, tokens, done, None))
    _count_discarded(ctx, produced[0], samples)
    return Decoding("lookahead", samples, stats={"k": k, "depth": depth, "commit": commit, "keywords": words, "length": length})


def _count_discarded(ctx: Context, produced: int, samples) -> None:
    """``tokens_generated`` counts every token the search produced (make_sample counts the kept ones)."""
    ctx.cost.tokens_generated += produced - sum(len(s.completion_ids) for s in samples)


def _token_logp(state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(state.logits.float(), -1).gather(-1, tokens[:, None].to(state.logits.device)).squeeze(-1)


@torch.no_grad()
def _w2s_batch(ctx: Context, jobs: list[tuple[Any, list[int]]], job_ids: list[int], tuned, untuned, beams: int, expand: int,
               chunk: int, stops: set[int], produced: list[int]) -> list[tuple[list[int], bool, float]]:
    """One batch of weak-to-strong beam search; ``produced[0]`` counts every token sampled."""
    width = beams * expand
    start_ids = [ids for _, ids in jobs for _ in range(beams)]
    base = prefill(ctx.model, start_ids, ctx.pad_id)
    small = [prefill(m, start_ids, ctx.pad_id) for m in (tuned, untuned)]
    tokens = [[] for _ in start_ids]
    done = [False] * len(start_ids)
    score = torch.zeros(len(start_ids))
    sampler = Sampler.from_settings(ctx.sampling)
    keys = sampler.job_keys([j * width + s for j in job_ids for s in range(width)], base.attention.device)
    budget = ctx.sampling.max_new_tokens
    t = 0
    while t < budget and not all(done):
        for s in (base, *small):
            s.fork(expand)
        tokens = [list(tokens[r]) for r in range(len(tokens)) for _ in range(expand)]
        done = [done[r] for r in range(len(done)) for _ in range(expand)]
        score = score.repeat_interleave(expand)
        for _ in range(min(chunk, budget - t)):
            next_tokens, _ = sampler(base.logits, keys, t)
            live = torch.tensor([not d for d in done])
            next_tokens = torch.where(live.to(next_tokens.device), next_tokens, torch.full_like(next_tokens, ctx.pad_id))
            delta = _token_logp(small[0], next_tokens) - _token_logp(small[1], next_tokens)
            score = score + torch.where(live, delta.cpu(), torch.zeros_like(score))
            for r, tk in enumerate(next_tokens.tolist()):
                if not done[r]:
                    tokens[r].append(tk)
                    done[r] = tk in stops
                    produced[0] += 1
            t += 1
            for s, m in zip((base, *small), (ctx.model, tuned, untuned)):
                s.advance(m, next_tokens)
        # keep the best ``beams`` of every job's beams * expand candidates
        grouped = score.view(len(jobs), width)
        top = grouped.topk(beams, dim=-1).indices
        keep = (torch.arange(len(jobs))[:, None] * width + top).reshape(-1)
        for s in (base, *small):
            s.select(keep.to(s.attention.device))
        keep_list = keep.tolist()
        tokens, done, score = [tokens[i] for i in keep_list], [done[i] for i in keep_list], score[keep]
    out = []
    for j in range(len(jobs)):
        group = list(range(j * beams, (j + 1) * beams))
        best = max(group, key=lambda r: (done[r], float(score[r])))
        out.append((tokens[best], done[best], float(score[best])))
    return out


@STRATEGIES.register("w2s", family="search", paper="Zhou et al. 2024, Weak-to-Strong Search")
def w2s(ctx: Context, tuned=None, untuned=None, beams: int = 2, expand: int = 2, chunk: int = 4) -> Decoding:
    """Chunk-level beam search on a small pair's implicit reward ``log pi_tuned - log pi_untuned`` (e.g. a DPO
    model and its reference): ``beams`` beams per output, each expanded into ``expand`` sampled chunks of
    ``chunk`` tokens of the base model per round. ``tuned`` / ``untuned``: model folders or objects with the
    base model's tokenizer."""
    check_backend(ctx, "w2s")
    if tuned is None or untuned is None:
        raise ValueError("decoding strategy 'w2s' needs tuned=PATH and untuned=PATH (a small tuned model and its reference)")
    if beams < 1 or expand < 1 or chunk < 1:
        raise ValueError(f"w2s: beams, expand and chunk must be >= 1 (got {beams}, {expand}, {chunk})")
    small_tuned, small_untuned = load_guides(ctx, [tuned, untuned], "w2s", role="small")
    ids = ctx.prompt_ids()
    jobs = [(p, i) for p, i in zip(ctx.prompts, ids) for _ in range(ctx.n)]
    stops = set(ctx.stops)
    samples, scores, produced = [], [], [0]
    for start in range(0, len(jobs), max(1, ctx.batch_size)):
        part = jobs[start : start + ctx.batch_size]
        for (prompt, prompt_ids), (tokens, done, s) in zip(part, _w2s_batch(ctx, part, list(range(start, start + len(part))), small_tuned,
                                                                            small_untuned, beams, expand, chunk, stops, produced)):
            samples.append(ctx.make_sample(prompt, prompt_ids, tokens, done, None))
            scores.append(s)
    _count_discarded(ctx, produced[0], samples)
    stats = {"beams": beams, "expand": expand, "chunk": chunk, "implicit_reward": sum(scores) / len(scores)}
    return Decoding("w2s", samples, stats=stats, rewards=scores)
