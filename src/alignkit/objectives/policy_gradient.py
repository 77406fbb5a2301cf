"""Pure-tensor objectives for online RL (policy-gradient family).

Nothing in this module touches a model, a tokenizer or the file system: every
function takes tensors and returns tensors.  Shapes used throughout:

* ``N``      number of sampled responses (sequence-level rewards ``[N]``),
* ``B, T``   batch and (padded) response length for token tensors ``[B, T]``,
* ``mask``   ``[B, T]``, bool or 0/1; a token counts as *valid* when ``mask > 0``.
  Values of other tensors at masked positions are never read (they may even be
  NaN/inf), so padding does not need to be cleaned by the caller.

Families and their entry points (one registry and one signature per family):

* :func:`outcome_advantages` - sequence-level advantage estimators
  (``grpo``, ``dr_grpo``, ``rloo``, ``remax``, ``reinforce``, ``reinforce_pp``,
  ``reinforce_pp_baseline``), registry :data:`OUTCOME_ADVANTAGES`.
* :func:`gae` - token-level generalised advantage estimation with a mask.
* :func:`kl_penalty` / :func:`kl_in_reward` - KL estimators ``k1``, ``k2``,
  ``k3``, ``abs``, registry :data:`KL_ESTIMATORS`.
* :func:`aggregate` - token -> scalar loss reduction, registry
  :data:`AGGREGATIONS`.
* :func:`policy_loss` - ``ppo_clip``, ``cispo``, ``gspo``, ``reinforce``,
  registry :data:`POLICY_LOSSES`.
* :func:`value_loss` - clipped PPO critic loss.
* :func:`macro_action_advantages` / :func:`macro_gae` - MA-RLHF macro actions.

See ``docs/conventions.md`` for the conventions chosen here.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "OUTCOME_ADVANTAGES",
    "POLICY_LOSSES",
    "MovingBaseline",
    "aggregate",
    "gae",
    "kl_in_reward",
    "kl_penalty",
    "macro_action_advantages",
    "macro_gae",
    "outcome_advantages",
    "policy_loss",
    "value_loss",
]

DEFAULT_EPS = 1e-4


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _valid(mask: Tensor) -> Tensor:
    """Boolean view of a mask (``mask > 0``)."""
    if mask.dtype == torch.bool:
        return mask
    return mask > 0


def _check_finite_rewards(rewards: Tensor) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    bad = ~torch.isfinite(rewards)
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten().tolist()
        kinds = ["NaN" if torch.isnan(rewards[i]) else "inf" for i in idx]
        detail = ", ".join(f"index {i} ({k})" for i, k in zip(idx, kinds))
        raise ValueError(f"non-finite reward (NaN/inf) at {detail}")


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) is not a multiple of group_size ({group_size})"
        )
    return rewards.view(-1, group_size)


def _std(x: Tensor, dim: int | None, unbiased: bool, keepdim: bool = False) -> Tensor:
    """Standard deviation that returns 0 (not NaN) when it is undefined.

    The unbiased (Bessel, ``n - 1``) estimate is undefined for a single
    element; we return 0 there so that the centred reward (itself 0 for a
    group of one) stays 0 after division by ``std + eps``.
    """
    n = x.numel() if dim is None else x.shape[dim]
    if unbiased and n < 2:
        if dim is None:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        shape = list(x.shape)
        if keepdim:
            shape[dim] = 1
        else:
            shape.pop(dim)
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    correction = 1 if unbiased else 0
    if dim is None:
        return torch.std(x, correction=correction)
    return torch.std(x, dim=dim, correction=correction, keepdim=keepdim)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 wherever ``den == 0`` (zero-variance groups, eps=0)."""
    den = torch.broadcast_to(den, num.shape)
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


# ---------------------------------------------------------------------------
# outcome (sequence-level) advantages
# ---------------------------------------------------------------------------


def _adv_grpo(
    rewards: Tensor,
    group_size: int,
    std: str = "group",
    eps: float = DEFAULT_EPS,
    unbiased: bool = True,
) -> Tensor:
    """GRPO (DeepSeekMath, Shao et al. 2024) group-relative advantage.

    ``A_i = (r_i - mean_g(r)) / (s + eps)`` where ``mean_g`` is the mean of the
    group that contains ``i`` and ``s`` is

    * ``std="group"``: the std of that group (GRPO as published),
    * ``std="batch"``: the std of all ``N`` rewards (TRL ``scale_rewards="batch"``),
    * ``std="none"``:  no division (same as ``dr_grpo``).

    ``unbiased=True`` (default, like TRL) uses Bessel's correction
    ``sqrt(sum (r - mean)^2 / (n - 1))``; ``unbiased=False`` divides by ``n``.
    A group of one has centred reward 0 and undefined unbiased std (taken as 0),
    so its advantage is 0.  A zero-variance group gives ``0 / (0 + eps) = 0``;
    if ``eps=0`` the division by zero is replaced by 0, never NaN.
    """
    g = _grouped(rewards, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if std == "group":
        s = _std(g, dim=1, unbiased=unbiased, keepdim=True)
    elif std == "batch":
        s = _std(rewards, dim=None, unbiased=unbiased)
    elif std == "none":
        return centred.reshape(-1)
    else:
        raise ValueError(f"std must be 'group', 'batch' or 'none', got {std!r}")
    return _safe_div(centred, s + eps).reshape(-1)


def _adv_dr_grpo(rewards: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training").

    ``A_i = r_i - mean_g(r)``: mean-centred, no std division (removes the
    question-difficulty bias of the std normaliser).  Groups of one and
    zero-variance groups give 0.
    """
    g = _grouped(rewards, group_size)
    return (g - g.mean(dim=1, keepdim=True)).reshape(-1)


def _adv_rloo(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE...").

    Leave-one-out baseline: ``A_i = r_i - (1 / (k - 1)) * sum_{j != i} r_j``
    with ``k = group_size``; equivalently ``k / (k - 1) * (r_i - mean_g(r))``.

    Choice for ``group_size == 1``: there is no other sample to form the
    baseline, so the advantage is defined as 0 (the sample carries no relative
    information) rather than the raw reward.
    """
    g = _grouped(rewards, group_size)
    if group_size == 1:
        return torch.zeros_like(rewards)
    loo = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - loo).reshape(-1)


def _adv_remax(rewards: Tensor, group_size: int, baseline: Tensor) -> Tensor:
    """ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient RL Method").

    ``A_i = r(x, y_i) - r(x, y_greedy)``: the baseline is the reward of the
    greedy response to the same prompt.  ``baseline`` is either one value per
    group (``[N // group_size]``, repeated over the group) or one per sample
    (``[N]``).
    """
    baseline = torch.as_tensor(baseline, dtype=rewards.dtype, device=rewards.device)
    n_groups = _grouped(rewards, group_size).shape[0]
    if baseline.dim() != 1:
        raise ValueError(f"remax baseline must be 1-D, got shape {tuple(baseline.shape)}")
    _check_finite_rewards(baseline)
    if baseline.numel() == rewards.numel():
        b = baseline
    elif baseline.numel() == n_groups:
        b = baseline.repeat_interleave(group_size)
    else:
        raise ValueError(
            f"remax baseline must have {n_groups} (one per group) or {rewards.numel()} "
            f"(one per sample) entries, got {baseline.numel()}"
        )
    return rewards - b


def _adv_reinforce(rewards: Tensor, group_size: int, baseline: float = 0.0) -> Tensor:
    """REINFORCE (Williams 1992) with an optional constant baseline.

    ``A_i = r_i - b``; ``b`` is a float such as :class:`MovingBaseline` ``.value``.
    ``group_size`` is only validated, the grouping is not used.
    """
    _grouped(rewards, group_size)
    return rewards - float(baseline)


def _adv_reinforce_pp(
    rewards: Tensor, group_size: int, eps: float = DEFAULT_EPS, unbiased: bool = True
) -> Tensor:
    """REINFORCE++ (Hu 2025, "REINFORCE++: ... Robust to Both Prompt and Reward Models").

    Global batch whitening: ``A_i = (r_i - mean(r)) / (std(r) + eps)`` over all
    ``N`` rewards, no grouping.  Here rewards are sequence-level, so each
    sequence counts once (OpenRLHF whitens token-level returns, which weights
    sequences by length).  Zero variance -> 0; a batch of one -> 0.
    """
    _grouped(rewards, group_size)
    centred = rewards - rewards.mean()
    return _safe_div(centred, _std(rewards, None, unbiased) + eps)


def _adv_reinforce_pp_baseline(
    rewards: Tensor, group_size: int, eps: float = DEFAULT_EPS, unbiased: bool = True
) -> Tensor:
    """REINFORCE++-baseline (Hu 2025): group mean subtraction, then global whitening.

    ``x_i = r_i - mean_g(r)``; ``A_i = (x_i - mean(x)) / (std(x) + eps)`` with
    the mean/std over all ``N`` centred rewards.
    """
    g = _grouped(rewards, group_size)
    x = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    return _safe_div(x - x.mean(), _std(x, None, unbiased) + eps)


OUTCOME_ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": _adv_grpo,
    "dr_grpo": _adv_dr_grpo,
    "rloo": _adv_rloo,
    "remax": _adv_remax,
    "reinforce": _adv_reinforce,
    "reinforce_pp": _adv_reinforce_pp,
    "reinforce_pp_baseline": _adv_reinforce_pp_baseline,
}


def outcome_advantages(name: str, rewards: Tensor, group_size: int, **params) -> Tensor:
    """Sequence-level advantages ``[N]`` from rewards ``[N]``.

    ``rewards`` are laid out as consecutive groups of ``group_size`` samples of
    the same prompt: ``[p0_s0, p0_s1, ..., p1_s0, ...]``.  ``name`` is a key of
    :data:`OUTCOME_ADVANTAGES`; ``params`` go to that estimator (unknown ones
    raise ``TypeError``).  Non-finite rewards raise ``ValueError`` naming the
    offending indices.  The result is computed without gradient tracking.
    """
    if name not in OUTCOME_ADVANTAGES:
        raise KeyError(f"unknown advantage estimator {name!r}; known: {sorted(OUTCOME_ADVANTAGES)}")
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    _check_finite_rewards(rewards)
    with torch.no_grad():
        return OUTCOME_ADVANTAGES[name](rewards.detach(), group_size, **params)


class MovingBaseline:
    """Exponential moving average of the mean reward, a REINFORCE baseline.

    ``b <- momentum * b + (1 - momentum) * mean(r)``; the first update sets
    ``b = mean(r)``.  Use ``value`` *before* ``update`` so a batch is not its own
    baseline::

        adv = outcome_advantages("reinforce", r, 1, baseline=mb.value)
        mb.update(r)
    """

    def __init__(self, momentum: float = 0.9, init: float | None = None) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self._value = init

    @property
    def value(self) -> float:
        return 0.0 if self._value is None else self._value

    def update(self, rewards: Tensor | list[float] | float) -> float:
        r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
        _check_finite_rewards(r)
        m = float(r.mean())
        if self._value is None:
            self._value = m
        else:
            self._value = self.momentum * self._value + (1.0 - self.momentum) * m
        return self._value


# ---------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016) with a token mask.

    For valid tokens (``mask > 0``), walking backwards::

        delta_t = r_t + gamma * V(next valid token after t) - V_t
        A_t     = delta_t + gamma * lam * A(next valid token after t)
        R_t     = A_t + V_t

    Masked tokens *inside* a sequence (tool / observation tokens) are skipped:
    they are not actions, the recursion passes over them, they do not consume a
    discount step, and their reward and value are ignored.  Their advantage and
    return are 0.  After the last valid token the value is 0 (terminal state),
    so ``delta_last = r_last - V_last``.

    Returns ``(advantages, returns)``, both ``[B, T]`` and detached.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values and mask must all be [B, T]; got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    valid = _valid(mask)
    with torch.no_grad():
        r = torch.where(valid, rewards.detach(), torch.zeros_like(rewards))
        v = torch.where(valid, values.detach().to(r.dtype), torch.zeros_like(r))
        B, T = r.shape
        adv = torch.zeros_like(r)
        next_value = torch.zeros(B, dtype=r.dtype, device=r.device)
        next_adv = torch.zeros(B, dtype=r.dtype, device=r.device)
        for t in range(T - 1, -1, -1):
            m = valid[:, t]
            delta = r[:, t] + gamma * next_value - v[:, t]
            a = delta + gamma * lam * next_adv
            adv[:, t] = torch.where(m, a, torch.zeros_like(a))
            next_value = torch.where(m, v[:, t], next_value)
            next_adv = torch.where(m, a, next_adv)
        returns = torch.where(valid, adv + v, torch.zeros_like(adv))
    return adv, returns


# ---------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------


def _kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp


def _kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return 0.5 * (logp - ref_logp) ** 2


def _kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def _kl_abs(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return (logp - ref_logp).abs()


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": _kl_k1,
    "k2": _kl_k2,
    "k3": _kl_k3,
    "abs": _kl_abs,
}


def kl_penalty(kind: str, logp: Tensor, ref_logp: Tensor, clamp: float | None = None) -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from tokens sampled from ``pi``.

    Estimators from J. Schulman, "Approximating KL Divergence" (2020 note); with
    ``log r = ref_logp - logp``:

    * ``k1  = logp - ref_logp = -log r``          (unbiased, high variance, can be < 0)
    * ``k2  = 0.5 * (logp - ref_logp)^2``         (biased, low variance, >= 0)
    * ``k3  = exp(ref_logp - logp) - (ref_logp - logp) - 1 = r - 1 - log r``
      (unbiased, >= 0; the GRPO / DeepSeekMath estimator)
    * ``abs = |logp - ref_logp|``                 (biased, >= 0)

    ``clamp=c`` clamps the estimate to ``[-c, c]`` (symmetric; for non-negative
    estimators only the upper bound matters).  Gradients flow through both
    arguments; detach ``ref_logp`` (usually already constant) as needed.
    """
    if kind not in KL_ESTIMATORS:
        raise KeyError(f"unknown KL estimator {kind!r}; known: {sorted(KL_ESTIMATORS)}")
    kl = KL_ESTIMATORS[kind](logp, ref_logp)
    if clamp is not None:
        if clamp <= 0:
            raise ValueError(f"clamp must be positive, got {clamp}")
        kl = kl.clamp(min=-clamp, max=clamp)
    return kl


def kl_in_reward(
    token_rewards_or_scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    kind: str = "k1",
    clamp: float | None = None,
) -> Tensor:
    """Per-token rewards with the KL penalty folded in (InstructGPT-style RLHF,
    Ouyang et al. 2022; Ziegler et al. 2019)::

        r_t = -beta * kl_t                       for every valid token t
        r_T = -beta * kl_T + score               on the last valid token T

    ``token_rewards_or_scores`` is either sequence scores ``[B]`` (added on the
    last valid token of each row) or token rewards ``[B, T]`` (added where
    valid).  Masked positions get 0.  A row with no valid token gets all zeros
    (its score is dropped; nothing can carry it).  Computed without gradient.
    """
    valid = _valid(mask)
    with torch.no_grad():
        kl = kl_penalty(kind, logp.detach(), ref_logp.detach(), clamp=clamp)
        out = torch.where(valid, -beta * kl, torch.zeros_like(kl))
        s = torch.as_tensor(token_rewards_or_scores, dtype=out.dtype, device=out.device)
        if s.dim() == 1:
            if s.shape[0] != out.shape[0]:
                raise ValueError(f"scores must be [B]={out.shape[0]}, got {tuple(s.shape)}")
            T = out.shape[1]
            pos = torch.arange(T, device=out.device).expand_as(out)
            last = torch.where(valid, pos, torch.full_like(pos, -1)).max(dim=1).values
            has = last >= 0
            rows = torch.nonzero(has).flatten()
            out[rows, last[rows]] += s[rows]
        elif s.shape == out.shape:
            out = out + torch.where(valid, s, torch.zeros_like(s))
        else:
            raise ValueError(
                f"token_rewards_or_scores must be [B] or [B, T]; got {tuple(s.shape)} for logp "
                f"{tuple(out.shape)}"
            )
    return out


# ---------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------


def _masked(loss: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid, loss, torch.zeros_like(loss))


def _agg_token_mean(loss: Tensor, valid: Tensor) -> Tensor:
    return _masked(loss, valid).sum() / valid.sum().clamp(min=1)


def _seq_mean(per_seq: Tensor, valid: Tensor) -> Tensor:
    nonempty = valid.any(dim=1)
    return _masked(per_seq, nonempty).sum() / nonempty.sum().clamp(min=1)


def _agg_seq_mean_token_mean(loss: Tensor, valid: Tensor) -> Tensor:
    per_seq = _masked(loss, valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return _seq_mean(per_seq, valid)


def _agg_seq_mean_token_sum(loss: Tensor, valid: Tensor) -> Tensor:
    return _seq_mean(_masked(loss, valid).sum(dim=1), valid)


def _agg_seq_mean_token_sum_norm(loss: Tensor, valid: Tensor, max_len: int | None = None) -> Tensor:
    max_len = loss.shape[1] if max_len is None else max_len
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    return _seq_mean(_masked(loss, valid).sum(dim=1) / max_len, valid)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "token_mean": _agg_token_mean,
    "seq_mean_token_mean": _agg_seq_mean_token_mean,
    "seq_mean_token_sum": _agg_seq_mean_token_sum,
    "seq_mean_token_sum_norm": _agg_seq_mean_token_sum_norm,
}


def aggregate(loss: Tensor, mask: Tensor, mode: str = "token_mean", **params) -> Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar.

    With ``n_b`` the number of valid tokens of row ``b`` and ``S`` the set of
    rows with ``n_b > 0``:

    * ``token_mean``:               ``sum_{b,t} m l / sum_b n_b``  (DAPO token-level)
    * ``seq_mean_token_mean``:      ``1/|S| sum_{b in S} (sum_t m l) / n_b`` (GRPO paper)
    * ``seq_mean_token_sum``:       ``1/|S| sum_{b in S} sum_t m l``
    * ``seq_mean_token_sum_norm``:  ``1/|S| sum_{b in S} (sum_t m l) / max_len``
      (Dr. GRPO: a constant ``max_len``, default ``T``, instead of ``n_b``)

    Rows with no valid token are left out of the sequence mean; if nothing is
    valid the result is an exact 0 that still belongs to the autograd graph -
    never NaN.  Values at masked positions are never read.
    """
    if mode not in AGGREGATIONS:
        raise KeyError(f"unknown aggregation {mode!r}; known: {sorted(AGGREGATIONS)}")
    if loss.shape != mask.shape or loss.dim() != 2:
        raise ValueError(f"loss and mask must be [B, T], got {tuple(loss.shape)} and {tuple(mask.shape)}")
    return AGGREGATIONS[mode](loss, _valid(mask), **params)


# ---------------------------------------------------------------------------
# policy losses
# ---------------------------------------------------------------------------


def _token_adv(advantages: Tensor, logp: Tensor) -> Tensor:
    a = advantages.detach().to(logp.dtype)
    if a.dim() == 1:
        if a.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages [B] must match batch {logp.shape[0]}, got {tuple(a.shape)}")
        return a[:, None].expand_as(logp)
    if a.shape != logp.shape:
        raise ValueError(f"advantages must be [B] or [B, T]={tuple(logp.shape)}, got {tuple(a.shape)}")
    return a


def _masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    return (_masked(x, valid).sum() / valid.sum().clamp(min=1)).detach()


def _common_metrics(log_ratio: Tensor, valid: Tensor) -> dict[str, Tensor]:
    lr = log_ratio.detach()
    # k3 estimate of KL(pi_old || pi) on tokens sampled from pi_old: r - 1 - log r
    approx_kl = torch.exp(lr) - 1.0 - lr
    return {
        "approx_kl": _masked_mean(approx_kl, valid),
        "ratio_mean": _masked_mean(torch.exp(lr), valid),
    }


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
        metrics["dual_clip_frac"] = _masked_mean(dual_active.to(logp.dtype), valid)
    metrics["clip_frac"] = _masked_mean(clip_active.to(logp.dtype), valid)
    return loss, metrics


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
    metrics["clip_frac"] = _masked_mean((w != ratio).to(logp.dtype), valid)
    return loss, metrics


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
        _masked(s_seq.squeeze(1), nonempty).sum() / nonempty.sum().clamp(min=1)
    ).detach()
    metrics["clip_frac"] = _masked_mean((surr2 < surr1).to(logp.dtype), valid)
    return loss, metrics


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
    seq_adv = _safe_div(torch.where(valid, adv, torch.zeros_like(adv)).sum(-1), n.to(adv.dtype))
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surr1, surr2 = ratio * seq_adv, clipped * seq_adv
    seq_loss = -torch.min(surr1, surr2)
    per_token = torch.where(valid, (seq_loss / n.clamp(min=1).to(seq_loss.dtype)).unsqueeze(-1).expand_as(logp), torch.zeros_like(logp))
    has = n > 0
    metrics = _common_metrics(log_ratio, valid)
    metrics["clip_frac"] = (surr2 < surr1)[has].to(logp.dtype).mean().detach() if has.any() else logp.new_zeros(())
    metrics["ratio_mean"] = ratio[has].mean().detach() if has.any() else logp.new_zeros(())
    return per_token, metrics


POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, Tensor]]]] = {
    "p3o": _loss_p3o,
    "ppo_clip": _loss_ppo_clip,
    "cispo": _loss_cispo,
    "gspo": _loss_gspo,
    "reinforce": _loss_reinforce,
}


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
    if name not in POLICY_LOSSES:
        raise KeyError(f"unknown policy loss {name!r}; known: {sorted(POLICY_LOSSES)}")
    if logp.dim() != 2 or logp.shape != mask.shape:
        raise ValueError(f"logp and mask must be [B, T], got {tuple(logp.shape)} and {tuple(mask.shape)}")
    if old_logp is None and name != "reinforce":
        raise ValueError(f"policy loss {name!r} needs old_logp")
    if old_logp is not None and old_logp.shape != logp.shape:
        raise ValueError(f"old_logp must be {tuple(logp.shape)}, got {tuple(old_logp.shape)}")
    agg_params = {}
    if "max_len" in params:
        agg_params["max_len"] = params.pop("max_len")
    valid = _valid(mask)
    adv = _token_adv(advantages, logp)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    old = None if old_logp is None else old_logp.detach()
    per_token, metrics = POLICY_LOSSES[name](logp, old, adv, valid, **params)
    return aggregate(per_token, valid, aggregation, **agg_params), metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    aggregation: str = "token_mean",
    **agg_params,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped PPO value loss (Schulman et al. 2017; as in OpenAI baselines ppo2)::

        V_clip = old_V + clip(V - old_V, -clip, clip)
        L_t    = 0.5 * max((V - R)^2, (V_clip - R)^2)

    ``clip=None`` gives the plain ``0.5 (V - R)^2``.  Returns ``(loss, metrics)``
    with ``vf_clip_frac`` (share of valid tokens where the clipped error is the
    larger one) and ``value_mean``.
    """
    valid = _valid(mask)
    ret = torch.where(valid, returns.detach(), torch.zeros_like(values))
    err = (values - ret) ** 2
    if clip is None:
        per_token = 0.5 * err
        active = torch.zeros_like(err, dtype=torch.bool)
    else:
        old = torch.where(valid, old_values.detach(), torch.zeros_like(values))
        v_clip = old + (values - old).clamp(-clip, clip)
        err_clip = (v_clip - ret) ** 2
        per_token = 0.5 * torch.max(err, err_clip)
        active = (err_clip > err).detach()
    loss = aggregate(per_token, valid, aggregation, **agg_params)
    metrics = {
        "vf_clip_frac": _masked_mean(active.to(values.dtype), valid),
        "value_mean": _masked_mean(values.detach(), valid),
    }
    return loss, metrics


# ---------------------------------------------------------------------------
# MA-RLHF macro actions
# ---------------------------------------------------------------------------


def _macro_ids(valid: Tensor, macro_len: int) -> tuple[Tensor, int]:
    """Block id of each valid token: consecutive runs of ``macro_len`` *valid*
    tokens (masked tokens are skipped and do not split a block)."""
    if not isinstance(macro_len, int) or macro_len < 1:
        raise ValueError(f"macro_len must be a positive int, got {macro_len!r}")
    k = valid.long().cumsum(dim=1) - 1
    ids = torch.where(valid, k // macro_len, torch.zeros_like(k))
    n_blocks = max(1, -(-valid.shape[1] // macro_len))
    return ids, n_blocks


def macro_action_advantages(token_advantages: Tensor, mask: Tensor, macro_len: int) -> Tensor:
    """Fixed-length macro-action advantages, after MA-RLHF (Chai et al. 2024,
    "MA-RLHF: Reinforcement Learning from Human Feedback with Macro Actions").

    Valid tokens of each row are cut into consecutive blocks ``omega_tau`` of
    ``macro_len`` valid tokens (masked tokens are skipped; the last block may
    be shorter).  Every token of a block gets the block mean::

        A_t = (1 / |omega_tau|) * sum_{t' in omega_tau} A_t'     for t in omega_tau

    Masked tokens get 0.  This averaging is our choice of a cheap stand-in for
    MA-RLHF's GAE over macro steps; use :func:`macro_gae` for that form.
    """
    valid = _valid(mask)
    ids, nb = _macro_ids(valid, macro_len)
    with torch.no_grad():
        a = _masked(token_advantages.detach(), valid)
        B = a.shape[0]
        sums = torch.zeros(B, nb, dtype=a.dtype, device=a.device).scatter_add_(1, ids, a)
        cnts = torch.zeros(B, nb, dtype=a.dtype, device=a.device).scatter_add_(1, ids, valid.to(a.dtype))
        means = sums / cnts.clamp(min=1)
        return _masked(means.gather(1, ids), valid)


def macro_gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    macro_len: int,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """GAE over macro steps, MA-RLHF (Chai et al. 2024)::

        r_tau    = sum of token rewards in macro action omega_tau
        V(s_tau) = value at the first valid token of omega_tau
        delta_tau = r_tau + gamma * V(s_{tau+1}) - V(s_tau)
        A_tau    = delta_tau + gamma * lam * A_{tau+1}

    Blocks are built as in :func:`macro_action_advantages`; every token of a
    block receives ``A_tau`` and ``R_tau = A_tau + V(s_tau)``; masked tokens 0.
    """
    valid = _valid(mask)
    ids, nb = _macro_ids(valid, macro_len)
    with torch.no_grad():
        r = _masked(rewards.detach(), valid)
        v = _masked(values.detach().to(r.dtype), valid)
        B = r.shape[0]
        r_m = torch.zeros(B, nb, dtype=r.dtype, device=r.device).scatter_add_(1, ids, r)
        cnt = torch.zeros(B, nb, dtype=r.dtype, device=r.device).scatter_add_(1, ids, valid.to(r.dtype))
        k = valid.long().cumsum(dim=1) - 1
        first = valid & (k % macro_len == 0)
        v_m = torch.zeros(B, nb, dtype=r.dtype, device=r.device).scatter_add_(1, ids, _masked(v, first))
        m_m = cnt > 0
        adv_m, ret_m = gae(r_m, v_m, m_m, gamma=gamma, lam=lam)
        return _masked(adv_m.gather(1, ids), valid), _masked(ret_m.gather(1, ids), valid)


def pairwise_advantages(rewards: Tensor) -> Tensor:
    """P3O's pairwise advantage for consecutive pairs ``(2k, 2k+1)``: ``A = ±(r_1 - r_2) / 2``.

    Invariant to any shift of the rewards that is shared by the pair (a prompt-dependent baseline).
    """
    if rewards.numel() % 2:
        raise ValueError(f"pairwise advantages need an even number of rewards, got {rewards.numel()}")
    _check_finite_rewards(rewards)
    pairs = rewards.view(-1, 2)
    diff = (pairs[:, 0] - pairs[:, 1]) / 2
    return torch.stack([diff, -diff], dim=1).reshape(-1).detach()


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
