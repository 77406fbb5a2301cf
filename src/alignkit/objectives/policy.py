"""Policy-gradient losses for online RL, reduced with :func:`~alignkit.objectives.aggregation.aggregate`.

Entry points: :func:`policy_loss` (registry :data:`POLICY_LOSSES`: ``ppo_clip``, ``cispo``, ``gspo``,
``reinforce``, ``p3o``) and :func:`copg_loss` (contrastive policy gradient on pairs).  ``logp`` /
``old_logp`` are per-token log-probs ``[B, T]``; ``mask`` ``[B, T]`` (valid when ``mask > 0``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..core.registry import Registry
from ._common import masked, masked_mean, safe_div, valid_mask
from .aggregation import aggregate

__all__ = ["POLICY_LOSSES", "copg_loss", "policy_loss"]

POLICY_LOSSES: Registry[Callable[..., tuple[Tensor, dict[str, Tensor]]]] = Registry("policy loss")


def _token_adv(advantages: Tensor, logp: Tensor) -> Tensor:
    a = advantages.detach().to(logp.dtype)
    if a.dim() == 1:
        if a.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages [B] must match batch {logp.shape[0]}, got {tuple(a.shape)}")
        return a[:, None].expand_as(logp)
    if a.shape != logp.shape:
        raise ValueError(f"advantages must be [B] or [B, T]={tuple(logp.shape)}, got {tuple(a.shape)}")
    return a


def _common_metrics(log_ratio: Tensor, valid: Tensor) -> dict[str, Tensor]:
    lr = log_ratio.detach()
    # k3 estimate of KL(pi_old || pi) on tokens sampled from pi_old: r - 1 - log r
    approx_kl = torch.exp(lr) - 1.0 - lr
    return {
        "approx_kl": masked_mean(approx_kl, valid),
        "ratio_mean": masked_mean(torch.exp(lr), valid),
    }


@POLICY_LOSSES.register("ppo_clip")
def _loss_ppo_clip(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    valid: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017), asymmetric clip as in DAPO
    (Yu et al. 2025, "clip-higher"), optional dual clip (Ye et al. 2020,
    "Mastering Complex Control in MOBA Games with Deep RL")::

        r_t  = exp(logp_t - old_logp_t)
        L_t  = -min(r_t A_t, clip(r_t, 1 - clip_low, 1 + clip_high) A_t)
        dual (A_t < 0 only): L_t = min(L_t, -c A_t),  c = dual_clip > 1
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    log_ratio = torch.where(valid, logp - old_logp.detach(), torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surr1 = ratio * adv
    surr2 = clipped * adv
    loss = -torch.min(surr1, surr2)
    clip_active = (surr2 < surr1).detach()
    metrics = _common_metrics(log_ratio, valid)
    if dual_clip is not None:
        dual_bound = -dual_clip * adv
        dual_active = ((adv < 0) & (loss > dual_bound)).detach()
        loss = torch.where(adv < 0, torch.min(loss, dual_bound), loss)
        metrics["dual_clip_frac"] = masked_mean(dual_active.to(logp.dtype), valid)
    metrics["clip_frac"] = masked_mean(clip_active.to(logp.dtype), valid)
    return loss, metrics


@POLICY_LOSSES.register("cispo")
def _loss_cispo(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    valid: Tensor,
    clip_high: float = 0.2,
    clip_low: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, MiniMax 2025): clip the importance-sampling weight, not
    the update, and keep every token's gradient::

        w_t = sg(clip(r_t, 1 - clip_low, 1 + clip_high))
        L_t = -w_t * A_t * logp_t

    ``clip_low=None`` (default) means no lower bound, as in MiniMax-M1 which
    sets the lower IS bound out of reach.  Note TRL's ``epsilon_high`` for
    ``cispo`` is an absolute cap; here the cap is ``1 + clip_high``.  The loss
    *value* is not meaningful (it contains ``logp``); only its gradient is.
    """
    log_ratio = torch.where(valid, logp - old_logp.detach(), torch.zeros_like(logp))
    ratio = torch.exp(log_ratio).detach()
    lo = None if clip_low is None else 1.0 - clip_low
    w = ratio.clamp(min=lo, max=1.0 + clip_high)
    loss = -w * adv * logp
    metrics = _common_metrics(log_ratio, valid)
    metrics["clip_frac"] = masked_mean((w != ratio).to(logp.dtype), valid)
    return loss, metrics


@POLICY_LOSSES.register("gspo")
def _loss_gspo(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    valid: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization")::

        s_i   = exp( (1/|y_i|) sum_t (logp_it - old_logp_it) )       (sequence ratio)
        s_it  = sg(s_i) * exp(logp_it - sg(logp_it))                  (GSPO-token)
        L_it  = -min(s_it A_it, clip(s_it, 1 - clip_low, 1 + clip_high) A_it)

    ``s_it`` equals ``s_i`` in value and has the GSPO gradient; with
    per-sequence advantages and ``aggregation="seq_mean_token_mean"`` this is
    exactly the GSPO sequence objective.  Defaults are the paper's clip range
    (3e-4, 4e-4).
    """
    log_ratio = torch.where(valid, logp - old_logp.detach(), torch.zeros_like(logp))
    n = valid.sum(dim=1, keepdim=True).clamp(min=1)
    seq_log_ratio = log_ratio.sum(dim=1, keepdim=True) / n
    s_seq = torch.exp(seq_log_ratio)
    s_tok = s_seq.detach() * torch.exp(log_ratio - log_ratio.detach())
    clipped = s_tok.clamp(1.0 - clip_low, 1.0 + clip_high)
    surr1 = s_tok * adv
    surr2 = clipped * adv
    loss = -torch.min(surr1, surr2)
    metrics = _common_metrics(log_ratio, valid)
    nonempty = valid.any(dim=1)
    metrics["ratio_mean"] = (
        masked(s_seq.squeeze(1), nonempty).sum() / nonempty.sum().clamp(min=1)
    ).detach()
    metrics["clip_frac"] = masked_mean((surr2 < surr1).to(logp.dtype), valid)
    return loss, metrics


@POLICY_LOSSES.register("reinforce")
def _loss_reinforce(
    logp: Tensor,
    old_logp: Tensor | None,
    adv: Tensor,
    valid: Tensor,
) -> tuple[Tensor, dict[str, Tensor]]:
    """REINFORCE (Williams 1992): ``L_t = -A_t * logp_t``, no ratio, no clip.
    ``old_logp`` may be ``None``; when given it only feeds the metrics."""
    loss = -adv * logp
    if old_logp is None:
        log_ratio = torch.zeros_like(logp)
    else:
        log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp))
    metrics = _common_metrics(log_ratio, valid)
    metrics["clip_frac"] = torch.zeros((), dtype=logp.dtype, device=logp.device)
    return loss, metrics


@POLICY_LOSSES.register("p3o")
def _loss_p3o(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    valid: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Trajectory-level clipped surrogate of P3O (Wu et al. 2023, "Pairwise Proximal Policy
    Optimization"), separate clipping of each response's trajectory ratio::

        rho_i = exp(sum_t (logp_it - old_logp_it))          (the whole response is one action)
        L_i   = -min(rho_i A_i, clip(rho_i, 1 - clip_low, 1 + clip_high) A_i)

    with the pairwise advantage ``A_1 = -A_2 = (r~(y_1) - r~(y_2)) / 2`` computed by the caller. The
    per-sequence loss is spread evenly over the sequence's valid tokens, so aggregate it with
    ``seq_mean_token_sum`` to get the mean of ``L_i`` over sequences.
    """
    n = valid.sum(-1)
    log_ratio = torch.where(valid, logp - old_logp.detach(), torch.zeros_like(logp))
    seq_log_ratio = log_ratio.sum(-1)
    ratio = torch.exp(seq_log_ratio)
    seq_adv = safe_div(torch.where(valid, adv, torch.zeros_like(adv)).sum(-1), n.to(adv.dtype))
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surr1, surr2 = ratio * seq_adv, clipped * seq_adv
    seq_loss = -torch.min(surr1, surr2)
    per_token = torch.where(valid, (seq_loss / n.clamp(min=1).to(seq_loss.dtype)).unsqueeze(-1).expand_as(logp), torch.zeros_like(logp))
    has = n > 0
    metrics = _common_metrics(log_ratio, valid)
    metrics["clip_frac"] = (surr2 < surr1)[has].to(logp.dtype).mean().detach() if has.any() else logp.new_zeros(())
    metrics["ratio_mean"] = ratio[has].mean().detach() if has.any() else logp.new_zeros(())
    return per_token, metrics


def policy_loss(
    name: str,
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    aggregation: str = "token_mean",
    **params,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Policy-gradient loss, reduced with :func:`aggregate`.

    ``logp`` / ``old_logp``: per-token log-probs ``[B, T]`` of the sampled tokens
    under the current (with grad) and the behaviour policy (detached here).
    ``advantages``: ``[B]`` (broadcast over tokens) or ``[B, T]``; detached.
    ``name`` is a key of :data:`POLICY_LOSSES`; ``params`` go to that loss;
    ``max_len`` is forwarded to ``seq_mean_token_sum_norm``.

    Returns ``(loss, metrics)``; metrics are detached 0-d tensors (no host
    sync): ``clip_frac`` (share of valid tokens whose clipped term is active),
    ``approx_kl`` (k3 estimate of ``KL(pi_old || pi)``: ``r - 1 - log r``),
    ``ratio_mean`` (token mean of ``r``; sequence mean of ``s_i`` for gspo) and,
    with a dual clip, ``dual_clip_frac``.
    """
    loss_fn = POLICY_LOSSES.get(name)  # KeyError naming the allowed losses
    if logp.dim() != 2 or logp.shape != mask.shape:
        raise ValueError(f"logp and mask must be [B, T], got {tuple(logp.shape)} and {tuple(mask.shape)}")
    if old_logp is None and name != "reinforce":
        raise ValueError(f"policy loss {name!r} needs old_logp")
    if old_logp is not None and old_logp.shape != logp.shape:
        raise ValueError(f"old_logp must be {tuple(logp.shape)}, got {tuple(old_logp.shape)}")
    agg_params = {}
    if "max_len" in params:
        agg_params["max_len"] = params.pop("max_len")
    valid = valid_mask(mask)
    adv = _token_adv(advantages, logp)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    old = None if old_logp is None else old_logp.detach()
    per_token, metrics = loss_fn(logp, old, adv, valid, **params)
    return aggregate(per_token, valid, aggregation, **agg_params), metrics


def copg_loss(seq_logp: Tensor, seq_ref_logp: Tensor, rewards: Tensor, beta: float) -> Tensor:
    """Contrastive Policy Gradient (Flet-Berliac et al. 2024) on consecutive pairs ``(2k, 2k+1)``::

        rho(y)  = log pi(y|x) - log pi_ref(y|x)                 (sequence sums)
        L_k     = (r(y) - r(y') - beta (rho(y) - rho(y')))^2 / (2 beta)

    whose gradient is ``-(R_beta(y) - R_beta(y')) * grad(log pi(y) - log pi(y'))`` with
    ``R_beta = r - beta rho``: a policy gradient with the paired sample as baseline that needs no
    importance weights, so ``y, y'`` may come from any behaviour policy. Returns the per-pair loss [P].
    """
    if beta <= 0:
        raise ValueError("copg needs beta > 0")
    if seq_logp.numel() % 2:
        raise ValueError(f"copg needs an even number of sequences, got {seq_logp.numel()}")
    rho = (seq_logp - seq_ref_logp.detach()).view(-1, 2)
    r = rewards.detach().view(-1, 2)
    residual = (r[:, 0] - r[:, 1]) - beta * (rho[:, 0] - rho[:, 1])
    return residual.pow(2) / (2 * beta)
