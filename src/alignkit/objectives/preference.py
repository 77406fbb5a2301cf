"""Pure-tensor offline preference objectives.

Every loss here works on sequence-level statistics that the caller has already
computed (summed completion log-probabilities, token counts, per-token KLs), so
the functions are independent of any model, tokenizer or trainer.

Conventions
-----------
* Log-probabilities are **summed** over the completion tokens (the convention of
  TRL's ``DPOTrainer``).  Losses that need per-token averages (IPO,
  ``sigmoid_norm``, SimPO, ORPO, PRO) divide by the token counts themselves.
* ``Δ(y) = log πθ(y|x) − log π_ref(y|x)`` is the policy/reference log-ratio and
  ``h = Δ(y_w) − Δ(y_l)`` the DPO margin.
* Every loss returns the **per-example** loss (shape ``[B]``); no reduction is
  applied, so the caller decides between mean, sum or weighted reductions.

Entry points: :func:`pairwise_loss` (registry :data:`PAIRWISE_LOSSES`),
:func:`unpaired_loss` (:data:`UNPAIRED_LOSSES`), :func:`listwise_loss`
(:data:`LISTWISE_LOSSES`), :func:`tdpo_loss`, :func:`combine` and the helpers
:func:`sequential_kl`, :func:`wpo_weights`, :func:`ld_dpo_logps`,
:func:`curriculum_pairs` and :class:`RunningMean`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PairLogps",
    "UnpairedLogps",
    "PAIRWISE_LOSSES",
    "UNPAIRED_LOSSES",
    "LISTWISE_LOSSES",
    "register_pairwise",
    "register_unpaired",
    "register_listwise",
    "pairwise_loss",
    "unpaired_loss",
    "listwise_loss",
    "tdpo_loss",
    "sequential_kl",
    "wpo_weights",
    "ld_dpo_logps",
    "curriculum_pairs",
    "combine",
    "RunningMean",
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


@dataclass
class UnpairedLogps:
    """Sequence statistics of ``B`` unpaired, binary-labelled completions (KTO/BCO style).

    Attributes:
        logp: summed completion log-probs under the policy, ``[B]``.
        ref_logp: summed completion log-probs under the reference, ``[B]``.
        label: bool tensor ``[B]``; ``True`` marks a desirable completion.
        tokens: completion token counts ``[B]`` (may be ``None``; unused by the current losses).
        kl_logp: policy log-probs of *mismatched* prompt/completion pairs (KTO's KL estimate), or ``None``.
        kl_ref_logp: reference log-probs of the same mismatched pairs, or ``None``.
    """

    logp: Tensor
    ref_logp: Tensor
    label: Tensor
    tokens: Tensor | None = None
    kl_logp: Tensor | None = None
    kl_ref_logp: Tensor | None = None

    def __post_init__(self) -> None:
        if self.logp.dim() != 1 or self.logp.shape != self.ref_logp.shape:
            raise ValueError(
                f"logp and ref_logp must both have shape [B]; got {tuple(self.logp.shape)} "
                f"and {tuple(self.ref_logp.shape)}"
            )
        if self.label.shape != self.logp.shape:
            raise ValueError(f"label must have shape {tuple(self.logp.shape)}; got {tuple(self.label.shape)}")
        if self.label.dtype != torch.bool:
            raise ValueError(f"label must be a bool tensor; got dtype {self.label.dtype}")
        if (self.kl_logp is None) != (self.kl_ref_logp is None):
            raise ValueError("kl_logp and kl_ref_logp must be given together (or both be None)")


# --------------------------------------------------------------------------------------
# Registries and argument checking
# --------------------------------------------------------------------------------------

PAIRWISE_LOSSES: dict[str, Callable[..., Tensor]] = {}
UNPAIRED_LOSSES: dict[str, Callable[..., Tensor]] = {}
LISTWISE_LOSSES: dict[str, Callable[..., Tensor]] = {}


def _make_register(registry: dict[str, Callable[..., Tensor]], kind: str):
    def register(name: str, *, reference: bool = True) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
        def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
            if name in registry:
                raise ValueError(f"{kind} loss {name!r} is already registered")
            fn.needs_reference = reference  # type: ignore[attr-defined]
            registry[name] = fn
            return fn

        return decorator

    return register


def register_pairwise(name: str, *, reference: bool = True):
    """Register ``fn(logps: PairLogps, beta: float, **params) -> Tensor[B]`` under ``name``.

    ``reference=False`` marks a reference-free loss (``ref_chosen``/``ref_rejected`` may be ``None``).
    Keyword parameters of ``fn`` (after ``beta``) become the accepted ``**params`` of :func:`pairwise_loss`.
    """
    return _make_register(PAIRWISE_LOSSES, "pairwise")(name, reference=reference)


def register_unpaired(name: str, *, reference: bool = True):
    """Register ``fn(logps: UnpairedLogps, beta: float, **params) -> Tensor[B]`` under ``name``."""
    return _make_register(UNPAIRED_LOSSES, "unpaired")(name, reference=reference)


def register_listwise(name: str, *, reference: bool = False):
    """Register ``fn(logps, tokens, ref_logps, beta, **params) -> Tensor[B]`` under ``name``."""
    return _make_register(LISTWISE_LOSSES, "listwise")(name, reference=reference)


def _lookup(registry: dict[str, Callable[..., Tensor]], kind: str, name: str) -> Callable[..., Tensor]:
    if name not in registry:
        raise ValueError(f"unknown {kind} loss {name!r}; allowed names: {', '.join(sorted(registry))}")
    return registry[name]


def _check_params(fn: Callable[..., Tensor], kind: str, name: str, n_positional: int, params: dict[str, Any]) -> None:
    """Raise TypeError for unknown or missing keyword parameters, naming them."""
    sig = inspect.signature(fn)
    accepted = list(sig.parameters)[n_positional:]
    unknown = [p for p in params if p not in accepted]
    if unknown:
        raise TypeError(
            f"{kind} loss {name!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"accepted parameters: {', '.join(accepted) or '(none)'}"
        )
    missing = [
        p for p in accepted if sig.parameters[p].default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise TypeError(f"{kind} loss {name!r} is missing required parameter(s) {', '.join(map(repr, missing))}")


def _check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite positive number; got {beta!r}")


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
    fn = _lookup(PAIRWISE_LOSSES, "pairwise", name)
    _check_params(fn, "pairwise", name, 2, params)
    _check_beta(beta)
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
    (see :class:`RunningMean`). δ = 0 (default) is TRL's ``bco_pair``.
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
# Unpaired losses
# --------------------------------------------------------------------------------------


class RunningMean:
    """Running mean of detached rewards, used as BCO's reward shift δ.

    ``momentum=None`` (default) keeps the exact cumulative mean over every value seen; a float in (0, 1]
    keeps an exponential moving average ``m ← (1 − momentum)·m + momentum·mean(batch)``.
    """

    def __init__(self, momentum: float | None = None, initial: float = 0.0) -> None:
        if momentum is not None and not (0.0 < momentum <= 1.0):
            raise ValueError(f"momentum must lie in (0, 1]; got {momentum!r}")
        self.momentum = momentum
        self.mean = float(initial)
        self.count = 0

    def update(self, values: Tensor) -> float:
        """Fold a tensor of values (any shape) into the mean and return the new mean."""
        values = values.detach().double().reshape(-1)
        return self.update_mean(float(values.mean()) if values.numel() else 0.0, values.numel())

    def update_mean(self, batch_mean: float, n: int) -> float:
        """Fold a batch of ``n`` values whose mean is ``batch_mean`` into the mean and return the new mean."""
        if n == 0:
            return self.mean
        if self.momentum is None:
            self.mean += (batch_mean - self.mean) * n / (self.count + n)
        elif self.count == 0:
            self.mean = batch_mean
        else:
            self.mean = (1.0 - self.momentum) * self.mean + self.momentum * batch_mean
        self.count += n
        return self.mean

    @property
    def value(self) -> float:
        return self.mean

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "count": self.count, "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.count, self.momentum = float(state["mean"]), int(state["count"]), state["momentum"]


def unpaired_loss(name: str, logps: UnpairedLogps, beta: float = 0.1, **params: Any) -> Tensor:
    """Per-example loss ``[B]`` of the registered unpaired objective ``name`` (same errors as :func:`pairwise_loss`)."""
    fn = _lookup(UNPAIRED_LOSSES, "unpaired", name)
    _check_params(fn, "unpaired", name, 2, params)
    _check_beta(beta)
    return fn(logps, beta, **params)


@register_unpaired("kto")
def kto(lp: UnpairedLogps, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
        z0: float | Tensor | None = None) -> Tensor:
    """KTO (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization").

    ``r = Δ(y)``, ``z0 = max(0, mean(log πθ(y'|x) − log π_ref(y'|x)))`` over mismatched pairs, detached.
    Desirable: ``λ_D·(1 − σ(β·(r − z0)))``; undesirable: ``λ_U·(1 − σ(β·(z0 − r)))``. The mean is the one
    over this batch's KL tensors, unless ``z0`` is given (the trainer passes the mean over every micro-batch
    and process of the step, so splitting a batch does not change it); no KL tensors and no ``z0``: 0.
    """
    r = lp.logp - lp.ref_logp
    if z0 is not None:
        z0 = torch.as_tensor(z0, dtype=r.dtype, device=r.device).clamp(min=0).detach()
    elif lp.kl_logp is None:
        z0 = torch.zeros((), dtype=r.dtype, device=r.device)
    else:
        z0 = (lp.kl_logp - lp.kl_ref_logp).mean().clamp(min=0).detach()  # type: ignore[operator]
    good = desirable_weight * (1.0 - torch.sigmoid(beta * (r - z0)))
    bad = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(lp.label, good, bad)


@register_unpaired("bco")
def bco(lp: UnpairedLogps, beta: float, delta: float | Tensor = 0.0) -> Tensor:
    """BCO (Jung et al., 2024, "Binary Classifier Optimization for Large Language Model Alignment").

    ``r = β·Δ(y)``; desirable: ``−log σ(r − δ)``; undesirable: ``−log σ(−(r − δ))``, with δ the running mean of
    past rewards (keep it with :class:`RunningMean`, updated with detached ``r`` of both labels).
    The paper's optional density-ratio (UDM) weighting is not included.
    """
    z = beta * (lp.logp - lp.ref_logp) - delta
    return torch.where(lp.label, -F.logsigmoid(z), -F.logsigmoid(-z))


@register_unpaired("apo_zero_unpaired")
def apo_zero_unpaired(lp: UnpairedLogps, beta: float) -> Tensor:
    """APO-zero for unpaired data (D'Oosterlinck et al., 2024, "Anchored Preference Optimization ...").

    Desirable: ``1 − σ(β·Δ(y))``; undesirable: ``σ(β·Δ(y))``.
    """
    z = beta * (lp.logp - lp.ref_logp)
    return torch.where(lp.label, 1.0 - torch.sigmoid(z), torch.sigmoid(z))


# --------------------------------------------------------------------------------------
# Listwise losses
# --------------------------------------------------------------------------------------


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
    fn = _lookup(LISTWISE_LOSSES, "listwise", name)
    _check_params(fn, "listwise", name, 4, params)
    _check_beta(beta)
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


# --------------------------------------------------------------------------------------
# Token-level helpers and losses
# --------------------------------------------------------------------------------------


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
    ref_logp = F.log_softmax(ref_logits, dim=-1)
    pol_logp = F.log_softmax(policy_logits, dim=-1)
    per_token = (ref_logp.exp() * (ref_logp - pol_logp)).sum(dim=-1)
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
    _check_beta(beta)
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
