"""``reward.type: scalar`` (the default): one score per completion, Bradley–Terry on pairs or ranked lists,
and ``reward.ensemble: K`` members trained side by side (with the online bootstrap)."""

from __future__ import annotations

import torch

from ...data.collate import collate_pairs, pad
from ...engine.contract import Metrics
from ...objectives.reward import centering, regression, reward_loss
from .base import REWARD_TYPES, RewardModelling


@REWARD_TYPES.register("scalar")
class ScalarRewardModelling(RewardModelling):
    """``−log σ(r_c − r_r − m)`` (or the hinge) + centring on pairs; on ranked data every ordered pair of a
    list with different scores is a pair (the list's loss is their mean), plus ``reward.regression`` ×
    squared error to the scores. With ``reward.ensemble: K`` every loss is per member, ``[B, K]``."""

    reward_type = "scalar"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.data_kind = "ranked" if recipe.data.kind == "ranked" else "pair"
        self.boot: torch.Tensor | None = None

    def build_model(self, path, model_config, load_reward_model):
        if self.cfg.ensemble > 1:
            from ...rewards.models import RewardEnsemble

            seed = self.recipe.train.seed
            init = self.cfg.ensemble_init
            return RewardEnsemble([load_reward_model(path, model_config, seed=seed + 1000 * k, reinit=init) for k in range(self.cfg.ensemble)])
        return super().build_model(path, model_config, load_reward_model)

    def setup(self, ctx) -> None:
        k = self.cfg.ensemble
        if k > 1 and self.cfg.bootstrap:  # Poisson(1) weight per (member, pair), fixed for the run
            g = torch.Generator().manual_seed(self.recipe.train.seed + 7919)
            self.boot = torch.poisson(torch.ones(k, len(ctx.train_examples)), generator=g)

    # ----------------------------------------------------------------------------------------------
    def collate(self, examples, pad_id):
        if self.data_kind == "ranked":
            return self._collate_ranked(examples, pad_id)
        batch = collate_pairs(examples, pad_id)
        batch["margin"] = torch.tensor([float(e.get("margin", 0.0)) for e in examples], dtype=torch.float32)
        batch["has_margin"] = torch.tensor([float("margin" in e) for e in examples], dtype=torch.float32)
        return batch

    def _collate_ranked(self, examples, pad_id):
        seqs, owner, scores = [], [], []
        for j, e in enumerate(examples):
            for c, s in zip(e["completion_ids"], e["scores"]):
                seqs.append(e["prompt_ids"] + c)
                owner.append(j)
                scores.append(float(s))
        return {
            "input_ids": pad(seqs, pad_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "owner": torch.tensor(owner, dtype=torch.long),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "n_lists": torch.tensor(len(examples)),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }

    def weight(self, batch) -> float:
        if "owner" in batch:
            return float(batch["n_lists"])
        return float(batch["index"].shape[0])

    # ----------------------------------------------------------------------------------------------
    def pair_losses(self, rc: torch.Tensor, rr: torch.Tensor, margin: torch.Tensor | None) -> torch.Tensor:
        params = {}
        if self.cfg.loss == "bradley_terry" and self.cfg.label_smoothing:
            params["label_smoothing"] = self.cfg.label_smoothing
        losses = reward_loss(self.cfg.loss, rc, rr, margin=margin, **params)
        if self.cfg.centering:
            losses = losses + centering(rc, rr, coef=self.cfg.centering)
        return losses

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        rewards = policy(batch["input_ids"], batch["attention_mask"])  # [N, K]
        if "owner" in batch:
            return self._ranked_loss(rewards, batch)
        b = batch["index"].shape[0]
        rc, rr = rewards[:b], rewards[b:]  # [B, K]
        margin = None
        if self.cfg.margin:
            margin = (batch["margin"] * batch["has_margin"] * self.cfg.margin_scale)[:, None]
        losses = self.pair_losses(rc, rr, margin)  # [B, K]
        k = rewards.shape[1]
        if self.boot is not None and getattr(policy, "training", True):
            w = self.boot[:, batch["index"].cpu()].T.to(losses.device, losses.dtype)  # [B, K]
            losses = losses * w
        total = losses.sum() / k
        with torch.no_grad():
            d = (rc - rr).detach()
            n = float(b)
            metrics: Metrics = {
                "accuracy": (float(((d > 0).float() + 0.5 * (d == 0).float()).mean(-1).sum()), n),
                "margin": (float(d.mean(-1).sum()), n),
                "chosen": (float(rc.detach().mean(-1).sum()), n),
                "rejected": (float(rr.detach().mean(-1).sum()), n),
            }
            if k > 1:
                r = torch.cat([rc, rr]).detach()
                metrics["ensemble_std"] = (float(r.std(-1, unbiased=False).sum()), 2 * n)
        return total, metrics

    def _ranked_loss(self, rewards: torch.Tensor, batch) -> tuple[torch.Tensor, Metrics]:
        owner, scores = batch["owner"], batch["scores"].to(rewards.device)
        k = rewards.shape[1]
        total = rewards.new_zeros(())
        correct, n_pairs = 0.0, 0.0
        for j in range(int(batch["n_lists"])):
            sel = (owner == j).nonzero().squeeze(-1)
            r, s = rewards[sel], scores[sel]  # [m, K], [m]
            hi, lo = torch.nonzero(s[:, None] > s[None, :], as_tuple=True)
            list_loss = rewards.new_zeros(())
            if len(hi):
                list_loss = self.pair_losses(r[hi], r[lo], None).mean(0).sum()
                with torch.no_grad():
                    correct += float((r[hi] > r[lo]).float().mean(-1).sum())
                    n_pairs += len(hi)
            if self.cfg.regression:
                list_loss = list_loss + self.cfg.regression * regression(r, s[:, None].expand_as(r)).mean(0).sum()
            total = total + list_loss / k
        return total, {"accuracy": (correct, max(n_pairs, 1.0)), "pairs_per_list": (n_pairs, float(batch["n_lists"]))}
