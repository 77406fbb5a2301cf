"""``reward.type: pal``: PAL's ideal-point mixture model (Chen et al. 2024, "PAL: Pluralistic Alignment
Framework for Learning from Heterogeneous Preferences").

The classifier maps ``(x, y)`` to features ``f(x, y) ∈ R^D`` (``num_labels = reward.feature_dim``; the paper
uses an MLP on frozen features, here the whole model learns). ``K = reward.components`` prototypes
``p_k ∈ R^D`` are shared; user ``u`` has weights ``w_u = softmax(θ_u)`` and the ideal point
``a_u = Σ_k w_uk p_k``. Their reward is ``r_u(x, y) = −‖f(x, y) − a_u‖²`` and
``P(c ≻ r | u) = σ(‖f(r) − a_u‖² − ‖f(c) − a_u‖²)``; the loss is its negative log-likelihood
(:func:`~alignkit.objectives.pluralistic.ideal_point_logits`). A user not seen in training is scored at
the uniform mix of the prototypes. Every ``reward.em_every`` steps each training user's weights are
re-fitted on all their pairs with ``f`` and the prototypes fixed (a block-coordinate step; at the body's
learning rate the user logits alone move too slowly). :func:`fit_user` fits a new user's weights from a few of their pairs
with ``f`` and the prototypes fixed (:func:`~alignkit.objectives.pluralistic.fit_user_weights`).

Logged: ``accuracy`` (by the user's own ideal point), ``weight_entropy`` (mean entropy of the users' w).
"""

from __future__ import annotations

import torch
from torch import nn

from ...engine.contract import Metrics
from ...objectives.pluralistic import fit_user_weights, ideal_point_logits, ideal_point_reward, ideal_points
from .base import REWARD_TYPES
from .users import UserPairModelling, UserRewardModel, unwrap


class IdealPoints(nn.Module):
    """``prototypes [K, D]`` and ``user_logits [U, K]``."""

    def __init__(self, n_users: int, k: int, d: int):
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(k, d))
        self.user_logits = nn.Parameter(0.1 * torch.randn(n_users, k))

    def points(self, users: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` ideal points of the users (index −1: the uniform mix of the prototypes)."""
        mean = self.prototypes.mean(0)[None, :].expand(users.shape[0], -1)
        if self.user_logits.shape[0] == 0:
            return mean
        known = ideal_points(self.prototypes, self.user_logits)[users.clamp(min=0)]
        return torch.where((users >= 0)[:, None], known, mean)


@REWARD_TYPES.register("pal")
class PALRewardModelling(UserPairModelling):
    reward_type = "pal"
    sizes = ("components", "feature_dim")

    @classmethod
    def make_extra(cls, config) -> nn.Module:
        return IdealPoints(len(getattr(config, "users", None) or []), int(config.components), int(config.feature_dim))

    def init_users(self, model: UserRewardModel, ctx) -> None:
        torch.manual_seed(self.recipe.train.seed + 7)
        model.extra = IdealPoints(len(model.users), self.cfg.components, self.cfg.feature_dim).to(ctx.device)

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        chosen, rejected = self.pair_outputs(policy, batch)
        points = unwrap(policy).extra.points(batch["user"].to(chosen.device))
        logits = ideal_point_logits(chosen, rejected, points)
        losses = -torch.nn.functional.logsigmoid(logits)
        with torch.no_grad():
            n = float(logits.shape[0])
            w = torch.softmax(unwrap(policy).extra.user_logits.detach(), -1)
            entropy = float(-(w * w.clamp(min=1e-12).log()).sum(-1).mean()) if len(w) else 0.0
            metrics: Metrics = {"accuracy": (self.accuracy(logits.detach()), n), "weight_entropy": (entropy * n, n)}
        return losses.sum(), metrics


    def after_step(self, ctx, step: int) -> None:
        if step % self.cfg.em_every == 0:
            self.refit_users(ctx)

    def refit_users(self, ctx) -> None:
        """Block-coordinate step: every training user's weights fitted on all their pairs, with the current
        features and prototypes fixed (the softmax logits move slowly at the body's learning rate)."""
        model: UserRewardModel = ctx.model
        chosen, rejected, users = self.all_pair_outputs(ctx)
        extra: IdealPoints = model.extra
        with torch.no_grad():
            for i in range(len(model.users)):
                mine = users == i
                if mine.any():
                    w = fit_user_weights(chosen[mine], rejected[mine], extra.prototypes.cpu(), steps=100, lr=0.1, init=extra.user_logits[i].cpu())
                    extra.user_logits[i] = torch.log(w.clamp(min=1e-6)).to(extra.user_logits.device)


def fit_user(model: UserRewardModel, chosen: torch.Tensor, rejected: torch.Tensor, steps: int = 200, lr: float = 0.1) -> torch.Tensor:
    """A new user's prototype weights ``[K]`` from the features ``[M, D]`` of a few of their labelled pairs."""
    return fit_user_weights(chosen, rejected, model.extra.prototypes, steps=steps, lr=lr)


def user_reward(model: UserRewardModel, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``−‖f − a‖²`` for the user with prototype weights ``weights [K]``."""
    return ideal_point_reward(features, weights @ model.extra.prototypes.detach())
