"""Pluralistic objectives: many users and groups instead of one Bradley–Terry reward (pure tensor maths).

Notation: a pair ``j`` (chosen ``c``, rejected ``r``) was labelled by user ``u(j)``; ``d_jk = r_k(c) − r_k(r)``
is the reward margin of component ``k`` of a mixture; ``σ`` is the logistic sigmoid.

==============================  ====================================================================
function                        formula
==============================  ====================================================================
:func:`em_responsibilities`     MaxMin-RLHF's E-step: ``γ_uk ∝ π_k Π_{j: u(j)=u} σ(d_jk)``, the
                                posterior that user ``u`` belongs to cluster ``k`` (``hard``: one-hot
                                on the argmax, the paper's assignment; an empty cluster takes the
                                user its cluster explains worst, :func:`fill_empty_clusters`)
:func:`mixture_prior`           ``π_k = mean_u γ_uk``
:func:`mixture_bradley_terry`   the M-step's weighted BT loss of a pair, ``−Σ_k γ_{u(j)k} log σ(d_jk)``
:func:`ideal_points`            PAL: user ``u``'s ideal point ``a_u = Σ_k w_uk p_k``, ``w_u = softmax(θ_u)``
:func:`ideal_point_reward`      PAL: ``r_u(x, y) = −‖f(x, y) − a_u‖²``
:func:`ideal_point_logits`      PAL: ``logit P(c ≻ r | u) = ‖f(r) − a_u‖² − ‖f(c) − a_u‖²``
:func:`fit_user_weights`        PAL, a new user: ``argmin_w Σ_j −log σ(logit_j(w))`` on the simplex,
                                prototypes and features fixed (a few of the user's pairs)
:func:`gaussian_kl`             ``KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²)``
:func:`vpl_loss`                VPL's negative ELBO per pair: ``−log σ(r(c, z) − r(r, z)) + λ KL(q(z|C_u) ‖ p(z))``
:func:`group_sums`              per-group sums and counts of per-example losses
:func:`exponentiated_gradient`  group-robust weights: ``α_g ← α_g exp(η L_g) / Σ_h α_h exp(η L_h)``
:func:`group_robust_weights`    per-example weight ``α_{g(i)} / p_{g(i)}`` (``p_g`` the group's share of the
                                data): the batch mean of ``w_i ℓ_i`` estimates ``Σ_g α_g L_g``
:func:`modpo_logits`            MODPO: ``(β / w_k) h − (1 / w_k) m``, ``h`` the DPO log-ratio margin and
                                ``m = w_{−k}ᵀ (r_{−k}(y_w) − r_{−k}(y_l))`` the other objectives' margin
:func:`brme_head_losses`        BRME head ``k`` on a pair: ``−log σ(μ_k(c) + σ_k(c) ε_c − μ_k(r) − σ_k(r) ε_r)``
                                ``+ λ_p Σ_y KL(N(μ_k(y), σ_k(y)²) ‖ N(0, s²))`` (reparameterised draw)
:func:`brme_reward`             ``λ μ_{argmin_k σ_k} + (1 − λ) min_k μ_k`` (robust), or ``min``, ``mean``,
                                ``nominal``, ``mean_minus_std``
==============================  ====================================================================
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "em_responsibilities",
    "mixture_prior",
    "fill_empty_clusters",
    "mixture_bradley_terry",
    "ideal_points",
    "ideal_point_reward",
    "ideal_point_logits",
    "fit_user_weights",
    "gaussian_kl",
    "vpl_loss",
    "group_sums",
    "exponentiated_gradient",
    "group_robust_weights",
    "modpo_logits",
    "GroupWeights",
    "BRME_REDUCTIONS",
    "gaussian_kl_to_prior",
    "brme_head_losses",
    "brme_reward",
]


# --------------------------------------------------------------------------------------------------
# MaxMin-RLHF: an EM-fitted mixture of Bradley–Terry reward models over users
# --------------------------------------------------------------------------------------------------
def em_responsibilities(margins: Tensor, users: Tensor, n_users: int, log_prior: Tensor | None = None, hard: bool = False) -> Tensor:
    """``[U, K]`` responsibilities from the pair margins ``[N, K]`` of K components and each pair's user
    index ``[N]``. A user without pairs gets the prior. ``hard=True``: one-hot on the most likely cluster."""
    if margins.dim() != 2 or users.shape != margins.shape[:1]:
        raise ValueError(f"em_responsibilities: margins [N, K] and users [N] expected, got {tuple(margins.shape)} and {tuple(users.shape)}")
    k = margins.shape[1]
    loglik = F.logsigmoid(margins.double())
    per_user = torch.zeros(n_users, k, dtype=torch.float64, device=margins.device).index_add(0, users.long(), loglik)
    prior = torch.full((k,), -torch.log(torch.tensor(float(k))).item(), dtype=torch.float64, device=margins.device) if log_prior is None else log_prior.double()
    post = per_user + prior
    if hard:
        return F.one_hot(fill_empty_clusters(post.argmax(-1), per_user, users, n_users), k).to(margins.dtype)
    return torch.softmax(post, dim=-1).to(margins.dtype)


def fill_empty_clusters(assign: Tensor, per_user: Tensor, users: Tensor, n_users: int) -> Tensor:
    """Hard EM's guard against a dead head: while a cluster has no user, it takes the user (of a cluster with
    two or more) whose own cluster explains them worst, by mean log-likelihood per pair."""
    k = per_user.shape[1]
    n_pairs = torch.zeros(n_users, dtype=torch.float64, device=per_user.device).index_add(0, users.long(), torch.ones_like(users, dtype=torch.float64))
    fit = per_user.gather(1, assign[:, None]).squeeze(1) / n_pairs.clamp(min=1)
    assign = assign.clone()
    for empty in range(k):
        sizes = torch.bincount(assign[n_pairs > 0], minlength=k)
        if sizes[empty] > 0:
            continue
        movable = (n_pairs > 0) & (sizes[assign] > 1)
        if not movable.any():
            break
        worst_user = torch.where(movable, fit, torch.full_like(fit, float("inf"))).argmin()
        assign[worst_user] = empty
        fit[worst_user] = float("inf")
    return assign


def mixture_prior(responsibilities: Tensor) -> Tensor:
    """``π_k``: the mean responsibility of cluster ``k`` over users."""
    return responsibilities.mean(0)


def mixture_bradley_terry(margins: Tensor, weights: Tensor) -> Tensor:
    """``−Σ_k w_jk log σ(d_jk)`` per pair, ``[N]``: each component's BT loss weighted by the responsibility
    of the pair's user for it (the M-step)."""
    if margins.shape != weights.shape:
        raise ValueError(f"mixture_bradley_terry: shapes differ ({tuple(margins.shape)} vs {tuple(weights.shape)})")
    return -(weights.to(margins.dtype) * F.logsigmoid(margins)).sum(-1)


# --------------------------------------------------------------------------------------------------
# PAL: ideal points as mixtures of prototypes
# --------------------------------------------------------------------------------------------------
def ideal_points(prototypes: Tensor, user_logits: Tensor) -> Tensor:
    """``[U, D]`` ideal points ``a_u = softmax(θ_u) @ P`` from prototypes ``[K, D]`` and user logits ``[U, K]``."""
    return torch.softmax(user_logits, dim=-1) @ prototypes


def ideal_point_reward(features: Tensor, points: Tensor) -> Tensor:
    """``−‖f − a‖²`` per row of ``features [N, D]`` and ideal points ``[N, D]`` (or one ``[D]``)."""
    return -((features - points) ** 2).sum(-1)


def ideal_point_logits(chosen: Tensor, rejected: Tensor, points: Tensor) -> Tensor:
    """``‖f(r) − a‖² − ‖f(c) − a‖²``: the logit that the user with ideal point ``a`` prefers ``c``."""
    return ideal_point_reward(chosen, points) - ideal_point_reward(rejected, points)


def fit_user_weights(chosen: Tensor, rejected: Tensor, prototypes: Tensor, steps: int = 200, lr: float = 0.1, init: Tensor | None = None) -> Tensor:
    """A new user's simplex weights ``[K]`` over fixed prototypes ``[K, D]``, fitted to their labelled pairs
    (features ``[M, D]``) by Adam on the softmax logits, minimising the mean BT loss."""
    chosen, rejected, prototypes = chosen.detach().float(), rejected.detach().float(), prototypes.detach().float()
    theta = (torch.zeros(prototypes.shape[0]) if init is None else init.detach().float().clone()).requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    with torch.enable_grad():  # also when called under no_grad (e.g. between training steps)
        for _ in range(steps):
            a = torch.softmax(theta, -1) @ prototypes
            loss = -F.logsigmoid(ideal_point_logits(chosen, rejected, a)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return torch.softmax(theta.detach(), -1)


# --------------------------------------------------------------------------------------------------
# VPL: a variational user latent
# --------------------------------------------------------------------------------------------------
def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(μ, diag σ²) ‖ N(0, I))`` per row, ``[B]``."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)


def vpl_loss(margins: Tensor, mu: Tensor, logvar: Tensor, kl_weight: float = 0.01) -> Tensor:
    """``−log σ(d) + λ KL``: the negative ELBO of a pair whose reward margin ``d`` was computed with a latent
    drawn from the user's posterior ``N(μ, σ²)``."""
    return -F.logsigmoid(margins) + kl_weight * gaussian_kl(mu, logvar)


# --------------------------------------------------------------------------------------------------
# group-robust preference optimisation
# --------------------------------------------------------------------------------------------------
def group_sums(losses: Tensor, groups: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """``(sums [G], counts [G])`` of the per-example ``losses [B]`` by group index ``[B]``."""
    z = torch.zeros(n_groups, dtype=torch.float64, device=losses.device)
    return z.index_add(0, groups.long(), losses.detach().double()), z.index_add(0, groups.long(), torch.ones_like(losses, dtype=torch.float64))


def exponentiated_gradient(alpha: Tensor, group_losses: Tensor, eta: float, present: Tensor | None = None) -> Tensor:
    """``α_g exp(η L_g)`` renormalised; groups not ``present`` this step keep their share before renormalising."""
    step = eta * group_losses.double()
    if present is not None:
        step = torch.where(present.bool(), step, torch.zeros_like(step))
    new = alpha.double() * torch.exp(step - step.max())
    return (new / new.sum()).to(alpha.dtype)


def group_robust_weights(groups: Tensor, alpha: Tensor, shares: Tensor) -> Tensor:
    """Per-example weights ``α_{g(i)} / p_{g(i)}``: with examples drawn at the groups' shares ``p``, the mean of
    ``w_i ℓ_i`` is an unbiased estimate of ``Σ_g α_g L_g`` (uniform α = p gives weight 1: plain DPO)."""
    g = groups.long()
    return (alpha[g] / shares[g]).float()


# --------------------------------------------------------------------------------------------------
# MODPO
# --------------------------------------------------------------------------------------------------
def modpo_logits(h: Tensor, margin: Tensor, beta: float, weight: float) -> Tensor:
    """MODPO's logit ``(β / w_k) h − (1 / w_k) m`` with ``h = Δ(y_w) − Δ(y_l)`` and ``m`` the weighted margin
    of the other objectives' rewards; the loss is ``−log σ`` of it."""
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"modpo: the trained objective's weight w_k must be in (0, 1], got {weight}")
    return (beta * h - margin) / weight


class GroupWeights:
    """Group-robust weighting state (Ramesh et al. 2024, "Group Robust Preference Optimization in Reward-free
    RLHF"): group names in a fixed order, their data shares ``p``, the weights ``α`` (starting at ``p``: the
    first step is the plain loss) and the per-group loss sums of the current step."""

    def __init__(self, names: Sequence[Any], eta: float):
        names = [str(n) for n in names]
        order = sorted(set(names))
        if not order:
            raise ValueError("group-robust weighting needs examples with a group")
        self.index = {g: i for i, g in enumerate(order)}
        counts = torch.zeros(len(order), dtype=torch.float64)
        for n in names:
            counts[self.index[n]] += 1
        self.names, self.eta = order, eta
        self.shares = counts / counts.sum()
        self.alpha = self.shares.clone()
        self.sums = torch.zeros(len(order), dtype=torch.float64)
        self.counts = torch.zeros(len(order), dtype=torch.float64)

    def indices(self, names: Sequence[Any]) -> Tensor:
        if names is None:
            raise ValueError("group-robust weighting: the batch has no group field")
        names = names.tolist() if hasattr(names, "tolist") else list(names)
        unknown = [n for n in names if str(n) not in self.index]
        if unknown:
            raise ValueError(f"group {unknown[0]!r} is not among the training groups ({', '.join(self.names)})")
        return torch.tensor([self.index[str(n)] for n in names], dtype=torch.long)

    def weights(self, names: Sequence[Any], losses: Tensor, record: bool = True) -> Tensor:
        """Per-example weights ``α_g / p_g`` for ``losses [B]``; with ``record`` the losses count towards this
        step's group losses."""
        g = self.indices(names)
        if record:
            s, c = group_sums(losses, g, len(self.names))
            self.sums += s.cpu()
            self.counts += c.cpu()
        return group_robust_weights(g, self.alpha, self.shares).to(losses.device, losses.dtype)

    def update(self, sums: Tensor | None = None, counts: Tensor | None = None) -> Tensor:
        """``α ← EG(α, mean group losses of the step)`` (groups absent this step keep their weight); resets the sums."""
        sums = self.sums if sums is None else sums
        counts = self.counts if counts is None else counts
        present = counts > 0
        self.alpha = exponentiated_gradient(self.alpha, sums / counts.clamp(min=1), self.eta, present)
        self.sums.zero_()
        self.counts.zero_()
        return self.alpha


# --------------------------------------------------------------------------------------------------
# BRME: a Bayesian multi-head reward ensemble and its robust (worst-case) reward
# --------------------------------------------------------------------------------------------------
BRME_REDUCTIONS = ("robust", "nominal", "min", "mean", "mean_minus_std")


def gaussian_kl_to_prior(mu: Tensor, log_std: Tensor, prior_std: float = 1.0) -> Tensor:
    """``KL(N(μ, σ²) ‖ N(0, s²)) = log(s / σ) + (σ² + μ²) / (2 s²) − ½`` elementwise (``σ = exp(log_std)``)."""
    if prior_std <= 0:
        raise ValueError(f"brme: the prior std must be > 0, got {prior_std}")
    var = torch.exp(2.0 * log_std)
    return math.log(prior_std) - log_std + (var + mu**2) / (2.0 * prior_std**2) - 0.5


def brme_head_losses(mu_c: Tensor, log_std_c: Tensor, mu_r: Tensor, log_std_r: Tensor, noise_c: Tensor, noise_r: Tensor,
                     prior_std: float = 1.0, prior_weight: float = 0.0) -> Tensor:
    """``[B, K]``: each head's loss on each pair. Head ``k`` says the reward of ``y`` is ``N(μ_k(y), σ_k(y)²)``;
    a reward is drawn by reparameterisation, ``r̃ = μ + σ ε``, and scored by Bradley–Terry, plus the prior term
    ``λ_p [KL(N(μ_k(c), σ_k(c)²) ‖ N(0, s²)) + KL(N(μ_k(r), σ_k(r)²) ‖ N(0, s²))]``::

        ℓ_k = −log σ(μ_k(c) + σ_k(c) ε_c − μ_k(r) − σ_k(r) ε_r) + λ_p (KL_c + KL_r)

    ``noise_*`` are the ε draws (zeros: the mean rewards). All tensors ``[B, K]``."""
    r_c = mu_c + torch.exp(log_std_c) * noise_c
    r_r = mu_r + torch.exp(log_std_r) * noise_r
    losses = -F.logsigmoid(r_c - r_r)
    if prior_weight:
        losses = losses + prior_weight * (gaussian_kl_to_prior(mu_c, log_std_c, prior_std) + gaussian_kl_to_prior(mu_r, log_std_r, prior_std))
    return losses


def brme_reward(mu: Tensor, log_std: Tensor, mode: str = "robust", lam: float = 0.5) -> Tensor:
    """``[N]`` reward from the heads' means ``μ [N, K]`` and log-stds ``[N, K]``:

    * ``robust``: ``λ r_nominal + (1 − λ) min_k μ_k`` (Reward-Robust RLHF's objective), where the nominal
      reward is the mean of the most confident head, ``μ_{k*}`` with ``k* = argmin_k σ_k`` (per sample);
    * ``nominal``: ``μ_{k*}``; ``min``: ``min_k μ_k`` (the worst case alone); ``mean``: ``mean_k μ_k``;
    * ``mean_minus_std``: ``mean_k μ_k − λ std_k μ_k`` (population std over the heads)."""
    if mu.shape != log_std.shape or mu.ndim != 2:
        raise ValueError(f"brme_reward: mu and log_std must both be [N, K], got {tuple(mu.shape)} and {tuple(log_std.shape)}")
    if mode in ("robust", "nominal"):
        nominal = mu.gather(-1, log_std.argmin(-1, keepdim=True)).squeeze(-1)
        if mode == "nominal":
            return nominal
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"brme_reward: robust needs lam in [0, 1] (the nominal reward's weight), got {lam}")
        return lam * nominal + (1.0 - lam) * mu.min(-1).values
    if mode == "min":
        return mu.min(-1).values
    if mode == "mean":
        return mu.mean(-1)
    if mode == "mean_minus_std":
        return mu.mean(-1) - lam * mu.std(-1, unbiased=False)
    raise KeyError(f"unknown brme reduction {mode!r}; allowed: {', '.join(BRME_REDUCTIONS)}")
