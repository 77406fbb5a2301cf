"""Nudging (Fei et al. 2024, "Nudging: Inference-time Alignment of LLMs via Guided Decoding"): a small aligned
*nudging* model writes the next token(s) whenever the base model is uncertain, i.e. its top-1 next-token
probability is below a threshold ``gamma``; the base model writes every other token.

Per step and row, with ``p_base`` the base model's next-token distribution (temperature 1):

    p(v) = p_nudge(v)   if max_v p_base(v) < gamma   (or the row is inside a nudged span)
    p(v) = p_base(v)    otherwise

Both models see the same tokens; the nudging model keeps its own KV cache in lockstep with the batch
(:class:`~alignkit.rollout.local.CachedModelGuide`), so it runs one forward of one token per step and never the
whole prefix again. ``span`` > 1 lets the nudging model, once triggered, write that many tokens in a row (the
paper nudges a word at a time). The rule is deterministic given the prefix, so the sampled tokens'
log-probabilities are exactly those of the nudged policy. Reported: the share of nudged tokens.
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


@STRATEGIES.register("nudging", family="guided decoding (model collaboration)", paper="Fei et al. 2024, Nudging")
def nudging(ctx: Context, nudger=None, gamma: float = 0.4, span: int = 1) -> Decoding:
    """The base model writes, except where its top-1 next-token probability is below ``gamma``: there the
    ``nudger`` (a small aligned model, folder or model object, same tokenizer) writes the next ``span`` tokens.
    ``gamma = 0`` is plain sampling of the base model, ``gamma > 1`` plain sampling of the nudging model."""
    check_backend(ctx, "nudging")
    if nudger is None:
        raise ValueError("decoding strategy 'nudging' needs nudger=PATH (a small aligned model with the same tokenizer)")
    (model,) = load_guides(ctx, [nudger], "nudging", role="nudger")
    guides: list[NudgingGuide] = []

    def make(prompts):
        guides.append(NudgingGuide(model, gamma, span, ctx.pad_id))
        return guides[-1]

    result = run_guided(ctx, make)
    nudged, tokens = sum(g.nudged for g in guides), sum(g.tokens for g in guides)
    result.stats = {"gamma": gamma, "span": span, "nudged_tokens": nudged, "tokens": tokens, "nudged_share": nudged / max(tokens, 1)}
    return result
