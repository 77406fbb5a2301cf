"""``reward.type: vpl``: Variational Preference Learning (Poddar et al. 2024, "Personalizing Reinforcement
Learning from Human Feedback with Variational Preference Learning").

The classifier maps ``(x, y)`` to features ``f(x, y) ∈ R^D`` (``reward.feature_dim``). The encoder reads a
set ``C_u`` of ``reward.context_pairs`` other labelled pairs of the same user: ``h_j = tanh(W_1 (f(c_j) −
f(r_j)))``, pooled by the mean, gives ``q(z | C_u) = N(μ, diag σ²)`` in ``R^Z`` (``reward.latent_dim``).
The reward is conditioned on the latent, ``r(x, y, z) = wᵀ tanh(W_2 [f(x, y); z])``, and the loss is the
negative ELBO ``−log σ(r(c, z) − r(r, z)) + λ KL(q ‖ N(0, I))`` with ``z = μ + σ ε`` in training and
``z = μ`` in evaluation (:func:`~alignkit.objectives.pluralistic.vpl_loss`; ``λ = reward.kl_weight``).

Context pairs come from the same split: evaluation pairs of users never seen in training are predicted from
a few of those users' own held-out pairs (a new user needs no training, only pairs). A pair whose user has
no other pair gets the prior ``z = 0``. Context draws are seeded by (seed, split, pair, draw).

Logged: ``accuracy``, ``kl`` (mean KL of the posteriors).
"""

from __future__ import annotations

import random

import torch
from torch import nn

from ...data.collate import collate_pairs
from ...engine.contract import Metrics
from ...objectives.pluralistic import gaussian_kl, vpl_loss
from .base import REWARD_TYPES
from .users import UserPairModelling, UserRewardModel, unwrap

HIDDEN = 32


class LatentReward(nn.Module):
    """The encoder ``q(z | C)`` and the latent-conditioned reward ``r(f, z)``."""

    def __init__(self, d: int, z: int, hidden: int = HIDDEN):
        super().__init__()
        self.encode_pair = nn.Sequential(nn.Linear(d, hidden), nn.Tanh())
        self.posterior = nn.Linear(hidden, 2 * z)
        self.reward = nn.Sequential(nn.Linear(d + z, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.z = z

    def encode(self, diff: torch.Tensor, owner: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)`` ``[n, Z]`` from context pair differences ``f(c) − f(r)`` ``[M, D]`` owned by rows
        ``owner [M]``; a row with no context pair gets the prior (0, 0)."""
        h = self.encode_pair(diff)
        pooled = torch.zeros(n, h.shape[-1], dtype=h.dtype, device=h.device).index_add(0, owner, h)
        count = torch.zeros(n, dtype=h.dtype, device=h.device).index_add(0, owner, torch.ones_like(owner, dtype=h.dtype))
        stats = self.posterior(pooled / count.clamp(min=1)[:, None])
        has = (count > 0)[:, None]
        mu, logvar = stats[:, : self.z], stats[:, self.z :]
        return torch.where(has, mu, torch.zeros_like(mu)), torch.where(has, logvar, torch.zeros_like(logvar))

    def score(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.reward(torch.cat([features, z.expand(features.shape[0], -1)], -1)).squeeze(-1)


@REWARD_TYPES.register("vpl")
class VPLRewardModelling(UserPairModelling):
    reward_type = "vpl"
    sizes = ("feature_dim", "latent_dim")

    @classmethod
    def make_extra(cls, config) -> nn.Module:
        return LatentReward(int(config.feature_dim), int(config.latent_dim))

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.pools: dict[tuple[str, str], list[dict]] = {}
        for examples in (ctx.train_examples or [], ctx.eval_examples or []):
            for e in examples:
                self.pools.setdefault((e["split"], self.user_of(e, e["split"])), []).append(e)
        self.draws = 0

    def context_of(self, e: dict) -> list[dict]:
        """``reward.context_pairs`` other pairs of the example's user (with replacement when there are fewer)."""
        others = [o for o in self.pools.get((e["split"], self.user_of(e, e["split"])), []) if o is not e]
        if not others:
            return []
        rng = random.Random(f"{self.recipe.train.seed}-{e['split']}-{e['index']}-{self.draws}")
        m = self.cfg.context_pairs
        return rng.sample(others, m) if len(others) >= m else [rng.choice(others) for _ in range(m)]

    def collate(self, examples, pad_id):
        batch = super().collate(examples, pad_id)
        self.draws += 1
        context, owner = [], []
        for i, e in enumerate(examples):
            for c in self.context_of(e):
                context.append(c)
                owner.append(i)
        if context:
            batch["context"] = collate_pairs([{k: c[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "index")} for c in context], pad_id)
        batch["context_owner"] = torch.tensor(owner, dtype=torch.long)
        return batch

    def posterior(self, policy, batch, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        extra: LatentReward = unwrap(policy).extra
        owner = batch["context_owner"]
        if "context" in batch:
            fc, fr = self.pair_outputs(policy, batch["context"])
            diff = fc - fr
        else:
            diff = torch.zeros(0, self.cfg.feature_dim)
        return extra.encode(diff, owner.to(diff.device), n)

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        chosen, rejected = self.pair_outputs(policy, batch)
        b = chosen.shape[0]
        mu, logvar = self.posterior(policy, batch, b)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if getattr(policy, "training", True) else mu
        extra: LatentReward = unwrap(policy).extra
        d = score_rows(extra, chosen, z) - score_rows(extra, rejected, z)
        losses = vpl_loss(d, mu, logvar, self.cfg.kl_weight)
        with torch.no_grad():
            n = float(b)
            metrics: Metrics = {"accuracy": (self.accuracy(d.detach()), n), "kl": (float(gaussian_kl(mu, logvar).sum()), n)}
        return losses.sum(), metrics


def score_rows(extra: LatentReward, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``r(f_i, z_i)`` row by row: features ``[B, D]`` with one latent per row ``[B, Z]``."""
    return extra.reward(torch.cat([features, z], -1)).squeeze(-1)


def user_latent(model: UserRewardModel, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """The posterior mean ``μ`` ``[Z]`` of a (new) user from the features ``[M, D]`` of a few of their pairs."""
    extra: LatentReward = model.extra
    mu, _ = extra.encode(chosen - rejected, torch.zeros(chosen.shape[0], dtype=torch.long), 1)
    return mu[0]
