"""Pairwise preference objectives: one chosen and one rejected completion per prompt.

Every loss works on sequence-level statistics that the caller has already computed (summed completion
log-probabilities, token counts, per-token KLs), so the functions are independent of any model,
tokenizer or trainer.

Conventions
-----------
* Log-probabilities are **summed** over the completion tokens (the convention of
  TRL's ``DPOTrainer``).  Losses that need per-token averages (IPO,
  ``sigmoid_norm``, SimPO, ORPO) divide by the token counts themselves.
* ``Δ(y) = log πθ(y|x) − log π_ref(y|x)`` is the policy/reference log-ratio and
  ``h = Δ(y_w) − Δ(y_l)`` the DPO margin.
* Every loss returns the **per-example** loss (shape ``[B]``); no reduction is
  applied, so the caller decides between mean, sum or weighted reductions.

Entry points: :func:`pairwise_loss` (registry :data:`PAIRWISE_LOSSES`), :func:`combine`,
:func:`tdpo_loss` and the token-level helpers :func:`sequential_kl`, :func:`wpo_weights` and
:func:`ld_dpo_logps`. Unpaired (KTO/BCO) losses live in :mod:`.unpaired`, listwise ones in :mod:`.listwise`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import Losses, check_beta, checked

__all__ = [
    "PairLogps",
    "PAIRWISE_LOSSES",
    "register_pairwise",
    "pairwise_loss",
    "combine",
    "tdpo_loss",
    "sequential_kl",
    "wpo_weights",
    "ld_dpo_logps",
]


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


@dataclass
class PairLogps:
    """Sequence statistics of a batch of ``B`` preference pairs.

    Attributes:
        chosen: summed completion log-probs of the preferred response under the policy, ``[B]``.
        rejected: same for the dispreferred response, ``[B]``.
        ref_chosen: summed log-probs of the preferred response under the reference, ``[B]``;
            ``None`` for reference-free losses.
        ref_rejected: same for the dispreferred response, ``[B]`` or ``None``.
        chosen_tokens: number of completion tokens of the preferred response, ``[B]`` or ``None``.
        rejected_tokens: number of completion tokens of the dispreferred response, ``[B]`` or ``None``.
        chosen_nll: optional mean per-token NLL of the preferred response under the policy, ``[B]``.
            When ``None`` it is derived as ``-chosen / chosen_tokens``.
    """

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_tokens: Tensor | None = None
    rejected_tokens: Tensor | None = None
    chosen_nll: Tensor | None = None

    def __post_init__(self) -> None:
        if self.chosen.dim() != 1 or self.chosen.shape != self.rejected.shape:
            raise ValueError(
                f"chosen and rejected must both have shape [B]; got {tuple(self.chosen.shape)} "
                f"and {tuple(self.rejected.shape)}"
            )
        if (self.ref_chosen is None) != (self.ref_rejected is None):
            raise ValueError("ref_chosen and ref_rejected must be given together (or both be None)")
        for field_name in ("ref_chosen", "ref_rejected", "chosen_tokens", "rejected_tokens", "chosen_nll"):
            value = getattr(self, field_name)
            if value is not None and tuple(value.shape) != tuple(self.chosen.shape):
                raise ValueError(
                    f"{field_name} must have shape {tuple(self.chosen.shape)}; got {tuple(value.shape)}"
                )


# --------------------------------------------------------------------------------------
# Registry and shared checks
# --------------------------------------------------------------------------------------

PAIRWISE_LOSSES: Losses[Callable[..., Tensor]] = Losses("pairwise loss")


def register_pairwise(name: str, *, reference: bool = True):
    """Register ``fn(logps: PairLogps, beta: float, **params) -> Tensor[B]`` under ``name``.

    ``reference=False`` marks a reference-free loss (``ref_chosen``/``ref_rejected`` may be ``None``).
    Keyword parameters of ``fn`` (after ``beta``) become the accepted ``**params`` of :func:`pairwise_loss`.
    """
    return PAIRWISE_LOSSES.register(name, needs_reference=reference)


def _logratios(lp: PairLogps, name: str) -> tuple[Tensor, Tensor]:
    if lp.ref_chosen is None or lp.ref_rejected is None:
        raise ValueError(
            f"loss {name!r} is reference-based: PairLogps.ref_chosen and ref_rejected must not be None"
        )
    return lp.chosen - lp.ref_chosen, lp.rejected - lp.ref_rejected


def _lengths(lp: PairLogps, name: str) -> tuple[Tensor, Tensor]:
    if lp.chosen_tokens is None or lp.rejected_tokens is None:
        raise ValueError(f"loss {name!r} needs chosen_tokens and rejected_tokens (completion token counts)")
    dtype = lp.chosen.dtype
    return lp.chosen_tokens.to(dtype).clamp(min=1.0), lp.rejected_tokens.to(dtype).clamp(min=1.0)


def _chosen_nll(lp: PairLogps, name: str) -> Tensor:
    if lp.chosen_nll is not None:
        return lp.chosen_nll
    if lp.chosen_tokens is None:
        raise ValueError(f"loss {name!r} needs chosen_nll or chosen_tokens to compute the NLL of the chosen response")
    return -lp.chosen / lp.chosen_tokens.to(lp.chosen.dtype).clamp(min=1.0)


def _check_smoothing(value: float, name: str, *, upper: float = 1.0) -> None:
    if not (0.0 <= value < upper):
        raise ValueError(f"label_smoothing for loss {name!r} must lie in [0, {upper}); got {value!r}")


def _smoothed_sigmoid(logits: Tensor, eps: float) -> Tensor:
    """``-(1-ε)·log σ(z) − ε·log σ(−z)`` (conservative/label-smoothed BT loss)."""
    loss = -F.logsigmoid(logits)
    if eps:
        loss = (1.0 - eps) * loss - eps * F.logsigmoid(-logits)
    return loss


# --------------------------------------------------------------------------------------
# Pairwise losses
# --------------------------------------------------------------------------------------


def pairwise_loss(name: str, logps: PairLogps, beta: float = 0.1, **params: Any) -> Tensor:
    """Per-pair loss ``[B]`` of the registered pairwise objective ``name``.

    Raises:
        ValueError: unknown ``name`` (the message lists allowed names), non-positive ``beta``,
            a reference-based loss without reference log-probs, or an invalid parameter value.
        TypeError: an unknown or missing keyword parameter (named in the message).
    """
    fn = checked(PAIRWISE_LOSSES, name, 2, params)
    check_beta(beta)
    if fn.needs_reference:  # type: ignore[attr-defined]
        _logratios(logps, name)
    return fn(logps, beta, **params)


@register_pairwise("dpo")
def dpo(lp: PairLogps, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al., 2023, "Direct Preference Optimization"); cDPO when ``label_smoothing > 0``.

    ``L = −(1−ε)·log σ(β·h) − ε·log σ(−β·h)``, ``h = Δ(y_w) − Δ(y_l)``.
    ``ε = 0`` (default) is TRL's ``loss_type="sigmoid"``. ε ∈ [0, 0.5).
    """
    _check_smoothing(label_smoothing, "dpo", upper=0.5)
    dc, dr = _logratios(lp, "dpo")
    return _smoothed_sigmoid(beta * (dc - dr), label_smoothing)


@register_pairwise("hinge")
def hinge(lp: PairLogps, beta: float) -> Tensor:
    """SLiC-HF hinge loss (Zhao et al., 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback").

    ``L = max(0, 1 − β·h)`` (TRL ``loss_type="hinge"``; 1/β plays the role of SLiC's margin δ).
    """
    dc, dr = _logratios(lp, "hinge")
    return torch.relu(1.0 - beta * (dc - dr))


@register_pairwise("ipo")
def ipo(lp: PairLogps, beta: float) -> Tensor:
    """IPO (Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences").

    ``L = (Δ(y_w)/|y_w| − Δ(y_l)/|y_l| − 1/(2β))²`` with β = τ of the paper (Eq. 17).
    As in TRL, the log-ratios are averaged per token (needs token counts).
    """
    dc, dr = _logratios(lp, "ipo")
    nc, nr = _lengths(lp, "ipo")
    return (dc / nc - dr / nr - 1.0 / (2.0 * beta)) ** 2


@register_pairwise("robust")
def robust(lp: PairLogps, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """rDPO (Chowdhury et al., 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback").

    ``L = [(1−ε)·ℓ(h) − ε·ℓ(−h)] / (1 − 2ε)``, ``ℓ(z) = −log σ(β·z)``; ε = label flip rate in [0, 0.5).
    """
    _check_smoothing(label_smoothing, "robust", upper=0.5)
    eps = label_smoothing
    dc, dr = _logratios(lp, "robust")
    z = beta * (dc - dr)
    return ((1.0 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


@register_pairwise("exo")
def exo(lp: PairLogps, beta: float, label_smoothing: float | None = None) -> Tensor:
    """EXO-pref (Ji et al., 2024, "Towards Efficient Exact Optimization of Language Model Alignment"), K = 2.

    ``L = KL(q‖p) = σ(β·h)·[log σ(β·h) − log(1−ε)] + σ(−β·h)·[log σ(−β·h) − log ε]``,
    with q the policy's softmax over {y_w, y_l} and p = (1−ε, ε). Requires ε ∈ (0, 1)
    (the paper suggests 1e-3). TRL name: ``exo_pair``.
    """
    if label_smoothing is None or not (0.0 < label_smoothing < 1.0):
        raise ValueError(f"loss 'exo' requires label_smoothing in (0, 1) (e.g. 1e-3); got {label_smoothing!r}")
    dc, dr = _logratios(lp, "exo")
    z = beta * (dc - dr)
    eps = label_smoothing
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )


@register_pairwise("nca")
def nca(lp: PairLogps, beta: float) -> Tensor:
    """NCA (Chen et al., 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards"), pairwise.

    ``L = −log σ(β·Δ(y_w)) − ½·log σ(−β·Δ(y_w)) − ½·log σ(−β·Δ(y_l))`` (TRL ``nca_pair``).
    """
    dc, dr = _logratios(lp, "nca")
    rc, rr = beta * dc, beta * dr
    return -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)


@register_pairwise("bco")
def bco_pair(lp: PairLogps, beta: float, delta: float | Tensor = 0.0) -> Tensor:
    """BCO on pairs (Jung et al., 2024, "Binary Classifier Optimization for Large Language Model Alignment").

    ``L = −log σ(β·Δ(y_w) − δ) − log σ(−(β·Δ(y_l) − δ))`` with δ the running reward shift
    (see :class:`~alignkit.objectives.unpaired.RunningMean`). δ = 0 (default) is TRL's ``bco_pair``.
    """
    dc, dr = _logratios(lp, "bco")
    return -F.logsigmoid(beta * dc - delta) - F.logsigmoid(-(beta * dr - delta))


@register_pairwise("sppo_hard")
def sppo_hard(lp: PairLogps, beta: float) -> Tensor:
    """SPPO with hard win probabilities (Wu et al., 2024, "Self-Play Preference Optimization for LM Alignment").

    ``L = (Δ(y_w) − 1/(2β))² + (Δ(y_l) + 1/(2β))²`` (P(y_w ≻ π) = 1, P(y_l ≻ π) = 0 in Eq. 4.7; η = 1/β).
    """
    dc, dr = _logratios(lp, "sppo_hard")
    return (dc - 0.5 / beta) ** 2 + (dr + 0.5 / beta) ** 2


@register_pairwise("apo_zero")
def apo_zero(lp: PairLogps, beta: float) -> Tensor:
    """APO-zero (D'Oosterlinck et al., 2024, "Anchored Preference Optimization and Contrastive Revisions"), Eq. 7.

    ``L = 1 − σ(β·Δ(y_w)) + σ(β·Δ(y_l))``: raise the chosen, lower the rejected likelihood.
    """
    dc, dr = _logratios(lp, "apo_zero")
    return 1.0 - torch.sigmoid(beta * dc) + torch.sigmoid(beta * dr)


@register_pairwise("apo_down")
def apo_down(lp: PairLogps, beta: float) -> Tensor:
    """APO-down (D'Oosterlinck et al., 2024, "Anchored Preference Optimization ..."), Eq. 8.

    ``L = σ(β·Δ(y_w)) + 1 − σ(β·(Δ(y_w) − Δ(y_l)))``: lower both, the rejected more.
    """
    dc, dr = _logratios(lp, "apo_down")
    return torch.sigmoid(beta * dc) + 1.0 - torch.sigmoid(beta * (dc - dr))


@register_pairwise("discopop")
def discopop(lp: PairLogps, beta: float, tau: float = 0.05) -> Tensor:
    """DiscoPOP / LRML (Chris Lu et al., 2024, "Discovering Preference Optimization Algorithms with and for LLMs").

    With ``z = β·h`` and ``m = σ(z/τ)``: ``L = (1 − m)·(−log σ(z)) + m·exp(−z)``
    (the log-ratio modulated loss as implemented by TRL, ``discopop_tau`` = τ = 0.05).
    """
    if tau <= 0:
        raise ValueError(f"tau for loss 'discopop' must be positive; got {tau!r}")
    dc, dr = _logratios(lp, "discopop")
    z = beta * (dc - dr)
    m = torch.sigmoid(z / tau)
    return (1.0 - m) * -F.logsigmoid(z) + m * torch.exp(-z)


@register_pairwise("sigmoid_norm")
def sigmoid_norm(lp: PairLogps, beta: float) -> Tensor:
    """Length-normalised DPO (Rafailov et al., 2023 DPO loss on per-token log-ratios; TRL ``sigmoid_norm``).

    ``L = −log σ(β·(Δ(y_w)/|y_w| − Δ(y_l)/|y_l|))``.
    """
    dc, dr = _logratios(lp, "sigmoid_norm")
    nc, nr = _lengths(lp, "sigmoid_norm")
    return -F.logsigmoid(beta * (dc / nc - dr / nr))


@register_pairwise("aot")
def aot(lp: PairLogps, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """AOT, paired (Melnyk et al., 2024, "Distributional Preference Alignment of LLMs via Optimal Transport").

    Sort ``u = log πθ(y_w) − log πθ(y_l)`` and ``v = log π_ref(y_w) − log π_ref(y_l)`` over the batch
    and apply the smoothed logistic loss to the sorted differences:
    ``L_(i) = −(1−ε)·log σ(β·(u_(i) − v_(i))) − ε·log σ(−β·(u_(i) − v_(i)))``.
    Element ``i`` of the result is the ``i``-th order statistic, not pair ``i``: only reductions over the
    batch are meaningful.
    """
    _check_smoothing(label_smoothing, "aot", upper=0.5)
    _logratios(lp, "aot")  # raises if the reference is missing
    u, _ = torch.sort(lp.chosen - lp.rejected, dim=0)
    v, _ = torch.sort(lp.ref_chosen - lp.ref_rejected, dim=0)  # type: ignore[operator]
    return _smoothed_sigmoid(beta * (u - v), label_smoothing)


@register_pairwise("aot_unpaired")
def aot_unpaired(lp: PairLogps, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """AOT, unpaired (Melnyk et al., 2024, "Distributional Preference Alignment of LLMs via Optimal Transport").

    Sort ``Δ(y_w)`` and ``Δ(y_l)`` independently over the batch (first-order stochastic dominance of the
    chosen over the rejected reward distribution):
    ``L_(i) = −(1−ε)·log σ(β·(Δ_w,(i) − Δ_l,(i))) − ε·log σ(−β·(Δ_w,(i) − Δ_l,(i)))``.
    Element ``i`` is the ``i``-th order statistic, not pair ``i``.
    """
    _check_smoothing(label_smoothing, "aot_unpaired", upper=0.5)
    dc, dr = _logratios(lp, "aot_unpaired")
    sc, _ = torch.sort(dc, dim=0)
    sr, _ = torch.sort(dr, dim=0)
    return _smoothed_sigmoid(beta * (sc - sr), label_smoothing)


@register_pairwise("simpo", reference=False)
def simpo(lp: PairLogps, beta: float, gamma: float = 0.5, label_smoothing: float = 0.0) -> Tensor:
    """SimPO (Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward").

    ``L = −log σ(β·log πθ(y_w)/|y_w| − β·log πθ(y_l)/|y_l| − γ)``.
    ``gamma`` is the paper's absolute margin γ (TRL CPO's ``simpo_gamma`` convention, default 0.5; TRL
    subtracts ``simpo_gamma/beta`` inside ``β·(·)``, which is the same quantity). No NLL term is added
    (TRL's CPO-SimPO adds ``cpo_alpha``·NLL; use :func:`combine` or ``cpo`` for that). The paper uses
    β ≈ 2–2.5; the shared default β = 0.1 is kept for a uniform signature.
    """
    _check_smoothing(label_smoothing, "simpo", upper=0.5)
    nc, nr = _lengths(lp, "simpo")
    return _smoothed_sigmoid(beta * (lp.chosen / nc - lp.rejected / nr) - gamma, label_smoothing)


def _log1mexp(x: Tensor) -> Tensor:
    """Stable ``log(1 − exp(x))`` for ``x < 0``."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@register_pairwise("orpo", reference=False)
def orpo(lp: PairLogps, beta: float) -> Tensor:
    """ORPO (Hong et al., 2024, "ORPO: Monolithic Preference Optimization without Reference Model").

    With mean per-token log-probs ``ℓ_w = log πθ(y_w)/|y_w|``, ``ℓ_l`` and ``odds(y) = p/(1−p)``, ``p = exp(ℓ)``:
    ``L = NLL(y_w) − β·log σ(log odds(y_w) − log odds(y_l))``,
    ``log odds(y_w) − log odds(y_l) = (ℓ_w − ℓ_l) − (log(1 − e^{ℓ_w}) − log(1 − e^{ℓ_l}))``.
    β is the paper's λ (TRL ORPO's ``beta``, default 0.1). NLL = ``chosen_nll`` or ``−ℓ_w`` (per-example mean
    over completion tokens; TRL averages the NLL over the whole batch's tokens, prompt included for some models).
    """
    nc, nr = _lengths(lp, "orpo")
    lw, ll = lp.chosen / nc, lp.rejected / nr
    log_odds = (lw - ll) - (_log1mexp(lw) - _log1mexp(ll))
    return _chosen_nll(lp, "orpo") - beta * F.logsigmoid(log_odds)


@register_pairwise("cpo", reference=False)
def cpo(lp: PairLogps, beta: float, alpha: float = 1.0, label_smoothing: float = 0.0) -> Tensor:
    """CPO (Xu et al., 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in MT").

    ``L = −log σ(β·(log πθ(y_w) − log πθ(y_l))) + α·NLL(y_w)`` on summed log-probs (TRL CPO ``sigmoid`` with
    ``cpo_alpha`` = α, default 1). NLL is the per-example mean per-token NLL of the chosen response.
    """
    _check_smoothing(label_smoothing, "cpo", upper=0.5)
    pref = _smoothed_sigmoid(beta * (lp.chosen - lp.rejected), label_smoothing)
    if alpha == 0:
        return pref
    return pref + alpha * _chosen_nll(lp, "cpo")


@register_pairwise("rpo")
def rpo(lp: PairLogps, beta: float, alpha: float = 1.0) -> Tensor:
    """RPO (Liu et al., 2024, "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an
    Adversarial Regularizer"); also Pang et al., 2024 "Iterative Reasoning Preference Optimization".

    ``L = −log σ(β·h) + α·NLL(y_w)``, NLL = mean per-token NLL of the chosen response (older TRL ``rpo_alpha``).
    """
    dc, dr = _logratios(lp, "rpo")
    return -F.logsigmoid(beta * (dc - dr)) + alpha * _chosen_nll(lp, "rpo")


_F_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


@register_pairwise("f_dpo")
def f_dpo(lp: PairLogps, beta: float, divergence: str = "reverse_kl", alpha: float = 0.5) -> Tensor:
    """f-DPO (Wang et al., 2023, "Beyond Reverse KL: Generalizing DPO with Diverse Divergence Constraints").

    ``L = −log σ(β·f'(u_w) − β·f'(u_l))``, ``u = πθ(y)/π_ref(y) = exp(Δ(y))``, with
    ``f'(u) = log u`` (reverse_kl = DPO), ``−1/u`` (forward_kl), ``log(2u/(1+u))`` (js) and
    ``(1 − u^{−α})/α`` (alpha, α ∈ (0, 1)). The paper's α equals ``1 − f_alpha_divergence_coef`` of TRL (which
    writes ``(u^{a−1} − 1)/(a−1)``); both conventions coincide at the default 0.5. TRL's forward-KL
    ``1 − 1/u`` differs by a constant that cancels in the difference.
    """
    if divergence not in _F_DIVERGENCES:
        raise ValueError(f"divergence for loss 'f_dpo' must be one of {', '.join(_F_DIVERGENCES)}; got {divergence!r}")
    dc, dr = _logratios(lp, "f_dpo")
    if divergence == "reverse_kl":
        sc, sr = dc, dr
    elif divergence == "forward_kl":
        sc, sr = -torch.exp(-dc), -torch.exp(-dr)
    elif divergence == "js":
        sc, sr = math.log(2.0) + F.logsigmoid(dc), math.log(2.0) + F.logsigmoid(dr)
    else:
        if not (0.0 < alpha < 1.0):
            raise ValueError(f"alpha for f_dpo divergence 'alpha' must lie in (0, 1); got {alpha!r}")
        sc, sr = (1.0 - torch.exp(-alpha * dc)) / alpha, (1.0 - torch.exp(-alpha * dr)) / alpha
    return -F.logsigmoid(beta * (sc - sr))


def combine(weighted: list[tuple[str, float, dict[str, Any]]], logps: PairLogps, beta: float = 0.1) -> Tensor:
    """Weighted sum of pairwise losses, ``L = Σ_k w_k·L_k`` (MPO-style mixtures, e.g. Wang et al., 2024,
    "Enhancing the Reasoning Ability of MLLMs via Mixed Preference Optimization": dpo + bco + NLL).

    ``weighted`` is a list of ``(name, weight, params)``; returns ``[B]``.
    """
    if not weighted:
        raise ValueError("combine needs at least one (name, weight, params) entry")
    total: Tensor | None = None
    for entry in weighted:
        if len(entry) != 3:
            raise ValueError(f"combine entries must be (name, weight, params) triples; got {entry!r}")
        name, weight, params = entry
        term = weight * pairwise_loss(name, logps, beta, **(params or {}))
        total = term if total is None else total + term
    assert total is not None
    return total


# --------------------------------------------------------------------------------------
# Token-level helpers and losses
# --------------------------------------------------------------------------------------


def token_kl(ref_logits: Tensor, policy_logits: Tensor) -> Tensor:
    """``KL(π_ref(·|s) ‖ πθ(·|s))`` for every row of ``[..., V]`` logits (shape ``[...]``)."""
    ref_logp = F.log_softmax(ref_logits, dim=-1)
    return (ref_logp.exp() * (ref_logp - F.log_softmax(policy_logits, dim=-1))).sum(dim=-1)


def sequential_kl(ref_logits: Tensor, policy_logits: Tensor, mask: Tensor) -> Tensor:
    """Sequential KL of TDPO: ``Σ_t mask_t · KL(π_ref(·|s_t) ‖ πθ(·|s_t))``, shape ``[B]``.

    ``ref_logits``/``policy_logits``: ``[B, T, V]`` (aligned with the completion tokens); ``mask``: ``[B, T]``.
    Gradients flow into ``policy_logits`` (and ``ref_logits`` if it requires grad; compute it under no_grad).
    """
    if ref_logits.shape != policy_logits.shape or ref_logits.dim() != 3:
        raise ValueError(
            f"ref_logits and policy_logits must both be [B, T, V]; got {tuple(ref_logits.shape)} "
            f"and {tuple(policy_logits.shape)}"
        )
    if mask.shape != ref_logits.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(ref_logits.shape[:2])}; got {tuple(mask.shape)}")
    per_token = token_kl(ref_logits, policy_logits)
    return (per_token * mask.to(per_token.dtype)).sum(dim=1)


def tdpo_loss(
    logps: PairLogps,
    seq_kl_chosen: Tensor,
    seq_kl_rejected: Tensor,
    beta: float = 0.1,
    alpha: float | None = None,
    variant: str = "tdpo2",
) -> Tensor:
    """TDPO (Zeng et al., 2024, "Token-level Direct Preference Optimization").

    ``L = −log σ(β·[h − α·(D_SeqKL(y_l) − sg?(D_SeqKL(y_w)))])`` with ``D_SeqKL`` from :func:`sequential_kl`.
    TDPO1: α = 1 and no stop-gradient on the chosen KL (``alpha`` must be None or 1).
    TDPO2: stop-gradient on the chosen KL, ``alpha`` default 0.5 (the reference implementation's default).
    """
    check_beta(beta)
    if variant not in ("tdpo1", "tdpo2"):
        raise ValueError(f"variant must be 'tdpo1' or 'tdpo2'; got {variant!r}")
    if seq_kl_chosen.shape != logps.chosen.shape or seq_kl_rejected.shape != logps.chosen.shape:
        raise ValueError("seq_kl_chosen and seq_kl_rejected must have shape [B] like logps.chosen")
    dc, dr = _logratios(logps, "tdpo")
    if variant == "tdpo1":
        if alpha is not None and alpha != 1.0:
            raise ValueError(f"tdpo1 fixes alpha = 1; got alpha={alpha!r} (use variant='tdpo2')")
        kl_term = seq_kl_rejected - seq_kl_chosen
    else:
        alpha = 0.5 if alpha is None else alpha
        kl_term = alpha * (seq_kl_rejected - seq_kl_chosen.detach())
    return -F.logsigmoid(beta * ((dc - dr) - kl_term))


def wpo_weights(
    policy_token_logps: Tensor,
    mask: Tensor,
    log_sum_sq_probs: Tensor | None = None,
) -> Tensor:
    """WPO sequence weights (Zhou et al., 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization").

    ``w(y) = exp( (1/|y|)·Σ_t (log πθ(y_t|s_t) − c_t) )``, detached, shape ``[B]``; ``c_t = 0`` by default,
    or ``c_t = log Σ_v πθ(v|s_t)²`` (pass ``log_sum_sq_probs`` ``[B, T]``) for the paper's sampling-aligned
    variant used by TRL's ``use_weighting``. The weight of a pair is ``w(y_w)·w(y_l)``; multiply the per-pair loss by it.
    """
    if policy_token_logps.shape != mask.shape or policy_token_logps.dim() != 2:
        raise ValueError(
            f"policy_token_logps and mask must both be [B, T]; got {tuple(policy_token_logps.shape)} "
            f"and {tuple(mask.shape)}"
        )
    with torch.no_grad():
        m = mask.to(policy_token_logps.dtype)
        lp = policy_token_logps.detach()
        if log_sum_sq_probs is not None:
            lp = lp - log_sum_sq_probs.detach()
        mean = (lp * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return torch.exp(mean)


def ld_dpo_logps(token_logps: Tensor, mask: Tensor, public_length: Tensor, alpha: float) -> Tensor:
    """LD-DPO length-desensitised sequence log-prob (Liu et al., 2024, "Length Desensitization in Directed
    Preference Optimization").

    ``log π̂(y) = Σ_{t ≤ l_p} log π(y_t) + α·Σ_{t > l_p} log π(y_t)``, positions counted over masked
    (completion) tokens, with ``l_p`` = ``public_length`` ``[B]`` (usually ``min(|y_w|, |y_l|)``) and α ∈ [0, 1]
    (α = 1: plain sum). Apply to policy and reference alike, then feed the results to ``dpo``.
    """
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha for ld_dpo_logps must lie in [0, 1]; got {alpha!r}")
    if token_logps.shape != mask.shape or token_logps.dim() != 2:
        raise ValueError(
            f"token_logps and mask must both be [B, T]; got {tuple(token_logps.shape)} and {tuple(mask.shape)}"
        )
    m = mask.to(token_logps.dtype)
    pos = m.cumsum(dim=1)
    lp_ = public_length.to(token_logps.dtype).reshape(-1, 1)
    public = (pos <= lp_).to(token_logps.dtype) * m
    verbose = (pos > lp_).to(token_logps.dtype) * m
    return (token_logps * public).sum(dim=1) + alpha * (token_logps * verbose).sum(dim=1)
