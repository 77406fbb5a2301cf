"""Nudging (Fei et al. 2024, "Nudging: Inference-time Alignment of LLMs via Guided Decoding"): a small aligned
*nudging* model writes the next token(s) whenever the base model is uncertain, i.e. its top-1 next-token
probability is below a threshold ``gamma``; the base model writes every other token.

Per step and row, with ``p_base`` the base model's next-token distribution (temperature 1):

    p(v) = p_nudge(v)   if max_v p_base(v) < gamma   (or the row is inside a nudged span)
    p(v) = p_base(v)    otherwise

Both models see the same tokens; the nudging model keeps its own KV cache in lockstep with the batch
(:class:`~alignkit.rollout.local.CachedModelGuide`), so it runs one forward of one token per step and never the
whole prefix again. ``unit="token"``: a triggered nudge writes ``span`` tokens. ``unit="word"`` (the paper's
rule): a triggered nudge writes ``span`` whole words: the nudging model keeps writing while its next token
continues the current word (a token that does not start with whitespace); where it would start a new word
the nudged word is over, and that position is decided by the rule above again. Written per token, inside the
last word of a nudged span and with the base model sure (top-1 >= gamma):

    p(v) = p_nudge(v)                                   v continues the word (set C)
    p(v) = p_nudge(W) * p_base(v) / p_base(W)           v starts a new word (set W: whitespace-led and special tokens)

(the nudging model's mass on ending the word handed to the base model's choice of the next word); with the base
unsure there it is ``p_nudge`` again (a new nudge). The rule is deterministic given the prefix, so the sampled
tokens' log-probabilities are exactly those of the nudged policy. Reported: the share of nudged tokens (and,
by words, of nudged words).
"""

from __future__ import annotations

import torch

from ..rollout.local import CachedModelGuide, StepState
from .base import STRATEGIES, Context, Decoding
from .guided import check_backend, load_guides, run_guided


class NudgingGuide(CachedModelGuide):
    """Replaces a row's logits by the nudging model's when the base model's top-1 probability is below
    ``gamma`` (or a nudged span of ``span`` tokens is still running); counts the nudged tokens."""

    def __init__(self, model, gamma: float, span: int = 1, pad_id: int = 0):
        if gamma < 0:
            raise ValueError(f"nudging: gamma must be >= 0 (got {gamma})")
        if span < 1:
            raise ValueError(f"nudging: span must be >= 1 (got {span})")
        super().__init__(model, 1.0, pad_id)
        self.gamma, self.span = float(gamma), int(span)
        self.left: torch.Tensor | None = None  # per row: nudged tokens still to write in the current span
        self.nudged = 0
        self.tokens = 0

    def prefill(self, state: StepState) -> None:
        super().prefill(state)
        self.left = torch.zeros(len(state.prompt_ids), dtype=torch.long, device=state.rows.device)

    def select(self, indices: torch.Tensor) -> None:
        super().select(indices)
        self.left = self.left[indices.to(self.left.device)]

    def nudge_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Rows the nudging model writes this step (and the span bookkeeping for the next steps)."""
        top1 = torch.softmax(logits.float(), -1).max(-1).values
        start = (top1 < self.gamma) & (self.left == 0)
        self.left = torch.where(start, torch.full_like(self.left, self.span), self.left)
        mask = self.left > 0
        self.left = (self.left - 1).clamp(min=0)
        return mask

    def __call__(self, logits: torch.Tensor, state: StepState) -> torch.Tensor:
        nudger = self.state.logits if state.last_tokens is None else self.state.advance(self.model, state.last_tokens)
        mask = self.nudge_mask(logits)
        self.nudged += int(mask.sum())
        self.tokens += int(mask.numel())
        return torch.where(mask[:, None], nudger.to(logits.dtype), logits)


WORD_MARKS = ("Ġ", "▁", "Ċ", " ", "\n", "\t")  # byte-level BPE, SentencePiece, newline and plain whitespace


def word_starts(tokenizer, vocab_size: int) -> torch.Tensor:
    """``[vocab_size]`` bool: the tokens that start a new word (whitespace-led in the tokenizer's own spelling),
    the special tokens, and the model's ids beyond the tokenizer; every other token continues a word."""
    starts = torch.ones(vocab_size, dtype=torch.bool)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    special = set(tokenizer.all_special_ids)
    for i, piece in enumerate(pieces):
        if i not in special and piece and not piece.startswith(WORD_MARKS):
            starts[i] = False
    return starts


class WordNudgingGuide(NudgingGuide):
    """Nudging by whole words (Fei et al.'s unit): triggered where the base model's top-1 probability is below
    ``gamma``, the nudging model writes until ``span`` words are complete (module docstring: the rule, with the
    nudging model's word-ending mass handed to the base model's next word). ``word_start``: ``[V]`` bool, the
    tokens that start a word (:func:`word_starts`). The per-step decisions are logged by job row and resolved
    against the final tokens by :meth:`count`."""

    def __init__(self, model, gamma: float, word_start: torch.Tensor, span: int = 1, pad_id: int = 0):
        super().__init__(model, gamma, span, pad_id)
        self.word_start = word_start.bool()
        self.prev: tuple[torch.Tensor, ...] | None = None  # last step's (left, sure) per row
        self.log: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # per step: rows, trigger, in word, full

    def select(self, indices: torch.Tensor) -> None:
        super().select(indices)
        idx = indices.to(self.left.device)
        self.prev = tuple(x[idx] for x in self.prev) if self.prev is not None else None

    def advance_words(self, last_tokens: torch.Tensor) -> None:
        """``left`` (words of the current nudged span still to write, the current one included) after the
        tokens just sampled."""
        left, sure = self.prev
        starts = self.word_start.to(last_tokens.device)[last_tokens]
        in_word = left > 0
        new = torch.where(left > 1, left - 1, torch.where(sure, torch.zeros_like(left), torch.full_like(left, self.span)))
        after_word = torch.where(starts, new, left)  # a word-starting token ends the current word
        self.left = torch.where(in_word, after_word, torch.where(sure, torch.zeros_like(left), torch.full_like(left, self.span)))

    def __call__(self, logits: torch.Tensor, state: StepState) -> torch.Tensor:
        nudger = self.state.logits if state.last_tokens is None else self.state.advance(self.model, state.last_tokens)
        if state.last_tokens is not None:
            self.advance_words(state.last_tokens)
        base = torch.log_softmax(logits.float(), -1)
        sure = base.max(-1).values.exp() >= self.gamma
        in_word = self.left > 0
        full = in_word & (~sure | (self.left > 1))  # the nudging model's distribution, whole
        trigger = ~in_word & ~sure
        mixed = in_word & ~full  # the span's last word, the base sure: the nudging model hands over at the word's end
        self.prev = (self.left.clone(), sure)
        self.log.append((state.rows.clone(), trigger, in_word, full))
        own = torch.log_softmax(nudger.float(), -1)
        out = torch.where((trigger | full)[:, None], own, base)
        if bool(mixed.any()):
            starts = self.word_start.to(logits.device)[: logits.shape[-1]]
            inf = torch.tensor(float("-inf"), device=logits.device)
            end_mass = torch.logsumexp(torch.where(starts, own, inf), -1, keepdim=True)  # log p_nudge(W)
            base_w = torch.where(starts, base, inf)
            base_w = base_w - torch.logsumexp(base_w, -1, keepdim=True).clamp(min=-1e30)  # log p_base(v | W)
            handed = torch.where(starts, end_mass + base_w, own)
            out = torch.where(mixed[:, None], handed, out)
        return out.to(logits.dtype)

    def count(self, completions: list[list[int]], special: set[int] = frozenset()) -> dict[str, int]:
        """Nudged tokens and nudged words (``special`` tokens, such as the stop token, are no words) of the decode
        call whose completions (by job row) are given."""
        nudged = words = tokens = 0
        starts = self.word_start.tolist()
        for step, (rows, trigger, in_word, full) in enumerate(self.log):
            for row, t, w, f in zip(rows.tolist(), trigger.tolist(), in_word.tolist(), full.tolist()):
                if step >= len(completions[row]):
                    continue
                token = completions[row][step]
                start = starts[token]
                tokens += 1
                nudged += int(t or (w and (f or not start)))
                words += int(token not in special and (t or (f and start)))
        return {"nudged_tokens": nudged, "nudged_words": words, "tokens": tokens}


def count_words(completion: list[int], word_start: torch.Tensor, special: set[int]) -> int:
    """Whitespace-delimited words of a completion: the word-starting tokens, and a first token that continues
    none (special tokens are not words)."""
    words, starts = 0, word_start.tolist()
    for i, token in enumerate(completion):
        if token in special:
            continue
        words += int(starts[token] or i == 0)
    return words


@STRATEGIES.register("nudging", family="guided decoding (model collaboration)", paper="Fei et al. 2024, Nudging")
def nudging(ctx: Context, nudger=None, gamma: float = 0.4, span: int = 1, unit: str = "token") -> Decoding:
    """The base model writes, except where its top-1 next-token probability is below ``gamma``: there the
    ``nudger`` (a small aligned model, folder or model object, same tokenizer) writes the next ``span`` tokens
    (``unit="token"``) or whole words (``unit="word"``, the paper's rule). ``gamma = 0`` is plain sampling of
    the base model, ``gamma > 1`` plain sampling of the nudging model."""
    check_backend(ctx, "nudging")
    if unit not in ("token", "word"):
        raise ValueError(f"decoding strategy 'nudging': unit must be one of token, word (got {unit!r})")
    if nudger is None:
        raise ValueError("decoding strategy 'nudging' needs nudger=PATH (a small aligned model with the same tokenizer)")
    (model,) = load_guides(ctx, [nudger], "nudging", role="nudger")
    guides: list[NudgingGuide] = []
    starts = word_starts(ctx.tokenizer, ctx.model.get_output_embeddings().weight.shape[0]) if unit == "word" else None

    def make(prompts):
        guides.append(WordNudgingGuide(model, gamma, starts, span, ctx.pad_id) if unit == "word" else NudgingGuide(model, gamma, span, ctx.pad_id))
        return guides[-1]

    result = run_guided(ctx, make)
    result.stats = {"gamma": gamma, "span": span, "unit": unit}
    if unit == "token":
        nudged, tokens = sum(g.nudged for g in guides), sum(g.tokens for g in guides)
        result.stats.update(nudged_tokens=nudged, tokens=tokens, nudged_share=nudged / max(tokens, 1))
        return result
    completions = [s.completion_ids for s in result.samples]
    bs, counts = max(1, ctx.batch_size), {"nudged_tokens": 0, "nudged_words": 0, "tokens": 0}
    special = set(ctx.tokenizer.all_special_ids)
    for i, g in enumerate(guides):
        for key, value in g.count(completions[i * bs : (i + 1) * bs], special).items():
            counts[key] += value
    words = sum(count_words(c, starts, special) for c in completions)
    result.stats.update(counts, words=words, nudged_share=counts["nudged_tokens"] / max(counts["tokens"], 1),
                        nudged_word_share=counts["nudged_words"] / max(words, 1))
    return result
