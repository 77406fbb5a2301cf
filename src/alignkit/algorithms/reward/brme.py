"""``reward.type: brme``: a Bayesian multi-head reward ensemble (BRME; Yan et al. 2024, "Reward-Robust RLHF in
LLMs") with the worst-case objective for RL.

K heads share one trunk (a sequence classifier with ``2K`` outputs). Head ``k`` models the reward of a
completion as a Gaussian ``N(μ_k, σ_k²)`` (outputs ``k`` and ``K + k``: ``μ_k`` and ``log σ_k``, clamped to
[−5, 2]). Each head is trained on Bradley–Terry with a reparameterised draw ``r̃ = μ + σ ε`` and a prior term
that keeps ``σ`` meaningful (:func:`~alignkit.objectives.pluralistic.brme_head_losses`)::

    ℓ_kj = w_kj [ −log σ(r̃_k(c_j) − r̃_k(r_j)) + λ_p Σ_{y ∈ {c_j, r_j}} KL(N(μ_k(y), σ_k(y)²) ‖ N(0, s²)) ]

with ``w_kj`` the bootstrap weights (``reward.bootstrap``: a Poisson(1) count per (head, pair), fixed for the
run, as for ``reward.ensemble``) that make the heads see different resamples of the data, ``λ_p =
reward.prior_weight``, ``s = reward.prior_std``. Without the prior the BT likelihood alone drives every ``σ``
to 0 (noise can only lower E log σ, which is concave), so no head would be "more confident" than another.
The loss of a batch is the mean over heads of the summed pair losses.

For RL the saved folder is a reward source reduced per sample by
:func:`~alignkit.objectives.pluralistic.brme_reward` (``rewards/brme.py``): ``reduce: robust`` is the paper's
``λ r_nominal + (1 − λ) min_k μ_k`` with the nominal reward the mean of the head with the smallest σ.

Logged: ``accuracy`` (by the heads' mean μ), ``accuracy/head<k>``, ``sigma`` (mean σ over heads and
completions), ``disagreement`` (mean std of μ over the heads).
"""

from __future__ import annotations

import torch

from ...data.collate import collate_pairs
from ...engine.contract import Metrics
from ...objectives.pluralistic import brme_head_losses
from .base import REWARD_TYPES, RewardModelling

LOG_STD_RANGE = (-5.0, 2.0)


def split_heads(out: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, 2K]`` outputs -> ``(μ [N, K], log σ [N, K])`` (log σ clamped to :data:`LOG_STD_RANGE`)."""
    if out.shape[-1] != 2 * k:
        raise ValueError(f"brme: the model has {out.shape[-1]} outputs, expected 2 x {k} heads")
    return out[:, :k], out[:, k:].clamp(*LOG_STD_RANGE)


@REWARD_TYPES.register("brme")
class BRMERewardModelling(RewardModelling):
    reward_type = "brme"
    data_kind = "pair"

    def __init__(self, recipe):
        super().__init__(recipe)
        if recipe.data.kind not in ("auto", "pair") or self.cfg.ensemble > 1:
            raise ValueError("reward.type=brme trains its K heads (reward.heads) on pairs (data.kind pair/auto), without reward.ensemble")
        self.k = self.cfg.heads
        self.boot: torch.Tensor | None = None
        self.noise = torch.Generator().manual_seed(recipe.train.seed + 15485863)

    def build_model(self, path, model_config, load_reward_model):
        model = load_reward_model(path, model_config, num_labels=2 * self.k, seed=self.recipe.train.seed)
        model.config.reward_type = self.reward_type
        model.config.heads = self.k
        return model

    def setup(self, ctx) -> None:
        if self.cfg.bootstrap and self.boot is None:
            g = torch.Generator().manual_seed(self.recipe.train.seed + 7919)
            self.boot = torch.poisson(torch.ones(self.k, len(ctx.train_examples)), generator=g)

    def collate(self, examples, pad_id):
        return collate_pairs(examples, pad_id)

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        out = policy(batch["input_ids"], batch["attention_mask"])  # [2B, 2K]
        mu, log_std = split_heads(out, self.k)
        b = batch["index"].shape[0]
        training = getattr(policy, "training", True)
        if training:
            noise = torch.randn(mu.shape, generator=self.noise).to(mu.device, mu.dtype)
        else:
            noise = torch.zeros_like(mu)
        losses = brme_head_losses(mu[:b], log_std[:b], mu[b:], log_std[b:], noise[:b], noise[b:],
                                  prior_std=self.cfg.prior_std, prior_weight=self.cfg.prior_weight)  # [B, K]
        if self.boot is not None and training:
            losses = losses * self.boot[:, batch["index"].cpu()].T.to(losses.device, losses.dtype)
        total = losses.sum() / self.k
        with torch.no_grad():
            d = (mu[:b] - mu[b:]).detach()
            n = float(b)
            metrics: Metrics = {
                "accuracy": (self.accuracy(d.mean(-1)), n),
                "sigma": (float(log_std.detach().exp().mean(-1).sum()), 2 * n),
                "disagreement": (float(mu.detach().std(-1, unbiased=False).sum()), 2 * n),
            }
            for k in range(self.k):
                metrics[f"accuracy/head{k}"] = (self.accuracy(d[:, k]), n)
        return total, metrics
