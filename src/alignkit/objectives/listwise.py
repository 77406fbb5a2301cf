"""Listwise preference objectives: ``K`` ranked completions per prompt, best first.

Entry point: :func:`listwise_loss` (registry :data:`LISTWISE_LOSSES`); :func:`curriculum_pairs` orders the
pairs of a ranked list easy to hard (Curry-DPO).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ._common import Losses, check_beta, checked

__all__ = ["LISTWISE_LOSSES", "register_listwise", "listwise_loss", "curriculum_pairs"]

LISTWISE_LOSSES: Losses[Callable[..., Tensor]] = Losses("listwise loss")


def register_listwise(name: str, *, reference: bool = False):
    """Register ``fn(logps, tokens, ref_logps, beta, **params) -> Tensor[B]`` under ``name``."""
    return LISTWISE_LOSSES.register(name, needs_reference=reference)


def listwise_loss(
    name: str,
    logps: Tensor,
    tokens: Tensor,
    ref_logps: Tensor | None = None,
    beta: float = 1.0,
    **params: Any,
) -> Tensor:
    """Per-prompt loss ``[B]`` for ``K`` ranked completions per prompt, best first.

    Args:
        logps: ``[B, K]`` summed completion log-probs under the policy.
        tokens: ``[B, K]`` completion token counts.
        ref_logps: ``[B, K]`` reference log-probs for reference-based listwise losses, else ``None``.
        beta: inverse temperature applied to the scores (1.0 = the paper's PRO).
    """
    fn = checked(LISTWISE_LOSSES, name, 4, params)
    check_beta(beta)
    if logps.dim() != 2 or logps.shape != tokens.shape:
        raise ValueError(
            f"logps and tokens must both have shape [B, K]; got {tuple(logps.shape)} and {tuple(tokens.shape)}"
        )
    if logps.shape[1] < 2:
        raise ValueError(f"listwise losses need K >= 2 completions per prompt; got K={logps.shape[1]}")
    if fn.needs_reference and ref_logps is None:  # type: ignore[attr-defined]
        raise ValueError(f"listwise loss {name!r} is reference-based: ref_logps must not be None")
    if not fn.needs_reference and ref_logps is not None:  # type: ignore[attr-defined]
        raise ValueError(f"listwise loss {name!r} is reference-free: pass ref_logps=None")
    if ref_logps is not None and ref_logps.shape != logps.shape:
        raise ValueError(f"ref_logps must have shape {tuple(logps.shape)}; got {tuple(ref_logps.shape)}")
    return fn(logps, tokens, ref_logps, beta, **params)


def _plackett_luce_nll(scores: Tensor) -> Tensor:
    """``−Σ_{k<K} log( e^{s_k} / Σ_{i≥k} e^{s_i} )`` for scores ``[B, K]`` ordered best first."""
    # logcumsumexp over the reversed list gives log Σ_{i≥k} e^{s_i} at position k
    tail_lse = torch.flip(torch.logcumsumexp(torch.flip(scores, dims=[1]), dim=1), dims=[1])
    return (tail_lse - scores)[:, :-1].sum(dim=1)


@register_listwise("pro")
def pro(logps: Tensor, tokens: Tensor, ref_logps: Tensor | None, beta: float, sft_weight: float = 0.0) -> Tensor:
    """PRO (Song et al., 2024, "Preference Ranking Optimization for Human Alignment").

    ``r_k = β·log πθ(y^k)/|y^k|``; ``L = −Σ_{k<K} log( e^{r_k} / Σ_{i≥k} e^{r_i} ) + λ·NLL(y^1)``, where
    NLL is the mean per-token NLL of the top completion and λ = ``sft_weight`` (default 0). The paper's
    reward-gap dynamic temperature is not included (β is a fixed inverse temperature, 1 = paper).
    """
    n = tokens.to(logps.dtype).clamp(min=1.0)
    avg = logps / n
    loss = _plackett_luce_nll(beta * avg)
    if sft_weight:
        loss = loss + sft_weight * (-avg[:, 0])
    return loss


def curriculum_pairs(scores: list[float]) -> list[tuple[int, int]]:
    """Curry-DPO ordering (Pattnaik et al., 2024, "Curry-DPO: Enhancing Alignment using Curriculum Learning &
    Ranked Preferences").

    Returns every ``(chosen_index, rejected_index)`` pair with ``scores[chosen] > scores[rejected]`` ordered
    easy to hard, i.e. by decreasing score gap; ties are broken by (chosen, rejected) index order.
    Equal scores yield no pair.
    """
    pairs = [
        (i, j)
        for i in range(len(scores))
        for j in range(len(scores))
        if scores[i] > scores[j]
    ]
    return sorted(pairs, key=lambda p: (-(scores[p[0]] - scores[p[1]]), p[0], p[1]))
