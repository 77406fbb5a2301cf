"""Advantage estimators for online RL: sequence-level (outcome) advantages, GAE and MA-RLHF macro actions.

Pure tensors in, tensors out, computed without gradient.  Shapes: ``N`` sampled responses (rewards
``[N]``, laid out as consecutive groups of ``group_size`` samples of one prompt), ``B, T`` batch and
padded response length for token tensors, ``mask`` ``[B, T]`` (a token is valid when ``mask > 0``;
values at masked positions are never read).

Entry points: :func:`outcome_advantages` (registry :data:`OUTCOME_ADVANTAGES`: ``grpo``, ``dr_grpo``,
``rloo``, ``remax``, ``reinforce``, ``reinforce_pp``, ``reinforce_pp_baseline``), :class:`MovingBaseline`,
:func:`gae`, :func:`macro_action_advantages`, :func:`macro_gae` and :func:`pairwise_advantages` (P3O).
See ``docs/conventions.md`` for the conventions chosen here.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..core.registry import Registry
from ._common import check_finite_rewards, masked, safe_div, valid_mask

__all__ = [
    "OUTCOME_ADVANTAGES",
    "MovingBaseline",
    "gae",
    "macro_action_advantages",
    "macro_gae",
    "outcome_advantages",
    "pairwise_advantages",
]

DEFAULT_EPS = 1e-4

OUTCOME_ADVANTAGES: Registry[Callable[..., Tensor]] = Registry("advantage estimator")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# outcome (sequence-level) advantages
# ---------------------------------------------------------------------------


@OUTCOME_ADVANTAGES.register("grpo")
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
    return safe_div(centred, s + eps).reshape(-1)


@OUTCOME_ADVANTAGES.register("dr_grpo")
def _adv_dr_grpo(rewards: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training").

    ``A_i = r_i - mean_g(r)``: mean-centred, no std division (removes the
    question-difficulty bias of the std normaliser).  Groups of one and
    zero-variance groups give 0.
    """
    g = _grouped(rewards, group_size)
    return (g - g.mean(dim=1, keepdim=True)).reshape(-1)


@OUTCOME_ADVANTAGES.register("rloo")
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


@OUTCOME_ADVANTAGES.register("remax")
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
    check_finite_rewards(baseline)
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


@OUTCOME_ADVANTAGES.register("reinforce")
def _adv_reinforce(rewards: Tensor, group_size: int, baseline: float = 0.0) -> Tensor:
    """REINFORCE (Williams 1992) with an optional constant baseline.

    ``A_i = r_i - b``; ``b`` is a float such as :class:`MovingBaseline` ``.value``.
    ``group_size`` is only validated, the grouping is not used.
    """
    _grouped(rewards, group_size)
    return rewards - float(baseline)


@OUTCOME_ADVANTAGES.register("reinforce_pp")
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
    return safe_div(centred, _std(rewards, None, unbiased) + eps)


@OUTCOME_ADVANTAGES.register("reinforce_pp_baseline")
def _adv_reinforce_pp_baseline(
    rewards: Tensor, group_size: int, eps: float = DEFAULT_EPS, unbiased: bool = True
) -> Tensor:
    """REINFORCE++-baseline (Hu 2025): group mean subtraction, then global whitening.

    ``x_i = r_i - mean_g(r)``; ``A_i = (x_i - mean(x)) / (std(x) + eps)`` with
    the mean/std over all ``N`` centred rewards.
    """
    g = _grouped(rewards, group_size)
    x = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    return safe_div(x - x.mean(), _std(x, None, unbiased) + eps)


def outcome_advantages(name: str, rewards: Tensor, group_size: int, **params) -> Tensor:
    """Sequence-level advantages ``[N]`` from rewards ``[N]``.

    ``rewards`` are laid out as consecutive groups of ``group_size`` samples of
    the same prompt: ``[p0_s0, p0_s1, ..., p1_s0, ...]``.  ``name`` is a key of
    :data:`OUTCOME_ADVANTAGES`; ``params`` go to that estimator (unknown ones
    raise ``TypeError``).  Non-finite rewards raise ``ValueError`` naming the
    offending indices.  The result is computed without gradient tracking.
    """
    estimator = OUTCOME_ADVANTAGES.get(name)  # KeyError naming the allowed estimators
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    check_finite_rewards(rewards)
    with torch.no_grad():
        return estimator(rewards.detach(), group_size, **params)


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
        check_finite_rewards(r)
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
    valid = valid_mask(mask)
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
    valid = valid_mask(mask)
    ids, nb = _macro_ids(valid, macro_len)
    with torch.no_grad():
        a = masked(token_advantages.detach(), valid)
        B = a.shape[0]
        sums = torch.zeros(B, nb, dtype=a.dtype, device=a.device).scatter_add_(1, ids, a)
        cnts = torch.zeros(B, nb, dtype=a.dtype, device=a.device).scatter_add_(1, ids, valid.to(a.dtype))
        means = sums / cnts.clamp(min=1)
        return masked(means.gather(1, ids), valid)


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
    valid = valid_mask(mask)
    ids, nb = _macro_ids(valid, macro_len)
    with torch.no_grad():
        r = masked(rewards.detach(), valid)
        v = masked(values.detach().to(r.dtype), valid)
        B = r.shape[0]
        r_m = torch.zeros(B, nb, dtype=r.dtype, device=r.device).scatter_add_(1, ids, r)
        cnt = torch.zeros(B, nb, dtype=r.dtype, device=r.device).scatter_add_(1, ids, valid.to(r.dtype))
        k = valid.long().cumsum(dim=1) - 1
        first = valid & (k % macro_len == 0)
        v_m = torch.zeros(B, nb, dtype=r.dtype, device=r.device).scatter_add_(1, ids, masked(v, first))
        m_m = cnt > 0
        adv_m, ret_m = gae(r_m, v_m, m_m, gamma=gamma, lam=lam)
        return masked(adv_m.gather(1, ids), valid), masked(ret_m.gather(1, ids), valid)


# ---------------------------------------------------------------------------
# P3O pairs
# ---------------------------------------------------------------------------


def pairwise_advantages(rewards: Tensor) -> Tensor:
    """P3O's pairwise advantage for consecutive pairs ``(2k, 2k+1)``: ``A = ±(r_1 - r_2) / 2``.

    Invariant to any shift of the rewards that is shared by the pair (a prompt-dependent baseline).
    """
    if rewards.numel() % 2:
        raise ValueError(f"pairwise advantages need an even number of rewards, got {rewards.numel()}")
    check_finite_rewards(rewards)
    pairs = rewards.view(-1, 2)
    diff = (pairs[:, 0] - pairs[:, 1]) / 2
    return torch.stack([diff, -diff], dim=1).reshape(-1).detach()
