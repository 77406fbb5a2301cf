"""``reward.type: mixture``: MaxMin-RLHF's mixture of K Bradley–Terry reward models over users (Chakraborty
et al. 2024), fitted by EM.

K reward heads share the body (a sequence classifier with ``num_labels = K``; the paper trains K separate
models). Each user ``u`` has responsibilities ``γ_u`` over the heads, started from a seeded random hard
assignment. M-step (every optimizer step): the weighted BT loss ``−Σ_k γ_{u(j)k} log σ(d_jk)``
(:func:`~alignkit.objectives.pluralistic.mixture_bradley_terry`). E-step (every ``reward.em_every``
steps): ``γ_uk ∝ π_k Π_j σ(d_jk)`` over all the user's training pairs
(:func:`~alignkit.objectives.pluralistic.em_responsibilities`; ``reward.em_hard``: the argmax, as in the
paper), ``π = mean_u γ_u``. A user not seen in training gets ``π``.

The saved folder loads as a K-output reward model: ``{type: model, path: <folder>, reduce: min}`` is the
max-min policy reward ``min_k r_k`` for any online RL estimator (``recipes/pluralistic/maxmin_grpo.yaml``).

Logged: ``accuracy`` (by the user's own mixture, ``Σ_k γ_uk d_k > 0``), ``accuracy/head<k>`` (each head
alone), ``prior/<k>`` after each E-step in the console.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...core.progress import say
from ...engine.contract import Metrics
from ...objectives.pluralistic import em_responsibilities, mixture_bradley_terry, mixture_prior
from .base import REWARD_TYPES
from .users import UserPairModelling, UserRewardModel, unwrap


class MixtureState(nn.Module):
    """Buffers: ``responsibilities [U, K]`` and ``log_prior [K]``."""

    def __init__(self, n_users: int, k: int):
        super().__init__()
        self.register_buffer("responsibilities", torch.full((n_users, k), 1.0 / k))
        self.register_buffer("log_prior", torch.full((k,), -math.log(k)))

    def weights(self, users: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: each pair's user's responsibilities (the prior for an unknown user, index −1)."""
        prior = self.log_prior.exp()[None, :].expand(users.shape[0], -1)
        if self.responsibilities.shape[0] == 0:
            return prior
        known = self.responsibilities[users.clamp(min=0)]
        return torch.where((users >= 0)[:, None], known, prior)


@REWARD_TYPES.register("mixture")
class MixtureRewardModelling(UserPairModelling):
    reward_type = "mixture"
    sizes = ("components",)

    @staticmethod
    def outputs_of(config: dict) -> int:
        return int(config["components"])

    @classmethod
    def make_extra(cls, config) -> nn.Module:
        return MixtureState(len(getattr(config, "users", None) or []), int(config.components))

    def init_users(self, model: UserRewardModel, ctx) -> None:
        k, n = self.cfg.components, len(model.users)
        g = torch.Generator().manual_seed(self.recipe.train.seed + 104729)
        start = torch.nn.functional.one_hot(torch.randint(0, k, (n,), generator=g), k).float()
        model.extra = MixtureState(n, k).to(ctx.device)
        model.extra.responsibilities.copy_(start)
        model.extra.log_prior.copy_(torch.log(mixture_prior(start).clamp(min=1e-6)))

    # ----------------------------------------------------------------------------------------------
    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        chosen, rejected = self.pair_outputs(policy, batch)
        d = chosen - rejected  # [B, K]
        state: MixtureState = unwrap(policy).extra
        w = state.weights(batch["user"].to(d.device))
        losses = mixture_bradley_terry(d, w)
        with torch.no_grad():
            n = float(d.shape[0])
            mixed = (w * d).sum(-1).detach()
            metrics: Metrics = {"accuracy": (self.accuracy(mixed), n)}
            for k in range(d.shape[1]):
                metrics[f"accuracy/head{k}"] = (self.accuracy(d[:, k].detach()), n)
        return losses.sum(), metrics

    def after_step(self, ctx, step: int) -> None:
        if step % self.cfg.em_every == 0:
            self.e_step(ctx)

    @torch.no_grad()
    def e_step(self, ctx) -> torch.Tensor:
        """Re-assign every training user from all their pairs; returns the new responsibilities."""
        model: UserRewardModel = ctx.model
        chosen, rejected, u = self.all_pair_outputs(ctx)
        d = chosen - rejected
        state: MixtureState = model.extra
        resp = em_responsibilities(d, u, len(model.users), state.log_prior.cpu(), hard=self.cfg.em_hard)
        state.responsibilities.copy_(resp.to(state.responsibilities.device))
        prior = mixture_prior(resp)
        state.log_prior.copy_(torch.log(prior.clamp(min=1e-6)).to(state.log_prior.device))
        say(f"E-step at step {ctx.step + 1}: cluster shares {', '.join(f'{p:.2f}' for p in prior.tolist())}", ctx.strategy.is_main)
        return resp


def cluster_of(model: UserRewardModel) -> dict[str, int]:
    """Each training user's most likely cluster."""
    resp = model.extra.responsibilities
    return {u: int(resp[i].argmax()) for i, u in enumerate(model.users)}
