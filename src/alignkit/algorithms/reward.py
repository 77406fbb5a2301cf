"""Reward-model training (``algorithm: reward``).

The model is an ``AutoModelForSequenceClassification`` (``num_labels=1``) built from the causal LM
checkpoint; it scores the last non-pad token (the completion's EOS) of ``prompt + completion``.

``reward.type``:

* ``scalar`` (default): Bradley–Terry on pairs, ``−log σ(r_c − r_r − m)`` (``reward.loss: hinge`` for the
  hinge variant), with the pair's ``margin`` field when ``reward.margin`` is on (times
  ``reward.margin_scale``), plus reward centring ``reward.centering · (r_c + r_r)²``. On ranked data
  (``data.kind: ranked``) every ordered pair of the list with different scores is a BT pair (the list's
  loss is the mean over them) and ``reward.regression`` weighs a squared error to the scores (ratings).
* ``reward.ensemble: K`` trains K members side by side in one run: each member's score head starts from
  its own seed (``reward.ensemble_init: all`` re-draws every weight with the member's seed, for an
  untrained starting checkpoint such as the tiny models), and with ``reward.bootstrap`` each member weighs every training pair by its own Poisson(1)
  count (the online bootstrap, fixed per (member, pair)). Saved as an ensemble folder (``ensemble.json``
  plus ``member-k/``, each a standard ``save_pretrained`` folder).
* ``preference``: a PairRM-style pairwise model: one input holds both responses, and the logit is made
  antisymmetric, ``ℓ = (f(c, r) − f(r, c)) / 2``; loss ``−log σ(ℓ)``. Its ``config.json`` carries
  ``reward_type: preference``.

Logged: ``accuracy``, ``margin`` (mean r_c − r_r), ``chosen``/``rejected`` mean rewards, and for an
ensemble ``ensemble_std`` (mean std over members).
"""

from __future__ import annotations

import torch

from ..data.collate import collate_pairs, pad
from ..objectives.reward import centering, regression, reward_loss
from .base import Algorithm, Metrics


class RewardModelling(Algorithm):
    name = "reward"
    data_kind = "pair"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.reward
        self.data_kind = "ranked" if recipe.data.kind == "ranked" else "pair"
        if self.cfg.type == "preference" and (self.data_kind != "pair" or self.cfg.ensemble > 1):
            raise ValueError("reward.type=preference trains on pairs (data.kind pair/auto) and without reward.ensemble")
        self.markers: tuple[list[int], list[int]] | None = None
        self.boot: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------------------
    def load_model(self, path, model_config, adapter=None):
        from ..rewards.models import RewardEnsemble, is_ensemble, load_reward_model

        if model_config.lora is not None or adapter is not None:
            raise ValueError("reward models are trained with full weights here (model.lora is not supported for algorithm: reward)")
        if is_ensemble(path):
            return RewardEnsemble.from_pretrained(path, model_config)
        seed = self.recipe.train.seed
        if self.cfg.ensemble > 1:
            return RewardEnsemble([load_reward_model(path, model_config, seed=seed + 1000 * k, reinit=self.cfg.ensemble_init) for k in range(self.cfg.ensemble)])
        model = load_reward_model(path, model_config, seed=seed)
        model.config.reward_type = self.cfg.type
        return model

    def module(self, model):
        from ..rewards.models import RewardForward

        return RewardForward(model)

    def setup(self, trainer) -> None:
        tok = trainer.tokenizer
        if self.cfg.type == "preference":
            from ..rewards.models import PAIR_MARKERS

            self.markers = tuple(tok(m, add_special_tokens=False)["input_ids"] for m in PAIR_MARKERS)  # type: ignore[assignment]
        k = self.cfg.ensemble
        if k > 1 and self.cfg.bootstrap:
            g = torch.Generator().manual_seed(self.recipe.train.seed + 7919)
            n = len(trainer.train_examples)
            self.boot = torch.poisson(torch.ones(k, n), generator=g)

    # ----------------------------------------------------------------------------------------------
    def collate(self, examples, pad_id):
        if self.data_kind == "ranked":
            return self._collate_ranked(examples, pad_id)
        if self.cfg.type == "preference":
            return self._collate_preference(examples, pad_id)
        batch = collate_pairs(examples, pad_id)
        batch["margin"] = torch.tensor([float(e.get("margin", 0.0)) for e in examples], dtype=torch.float32)
        batch["has_margin"] = torch.tensor([float("margin" in e) for e in examples], dtype=torch.float32)
        return batch

    def _collate_preference(self, examples, pad_id):
        a_mark, b_mark = self.markers
        seqs = [e["prompt_ids"] + a_mark + e["chosen_ids"] + b_mark + e["rejected_ids"] for e in examples]
        seqs += [e["prompt_ids"] + a_mark + e["rejected_ids"] + b_mark + e["chosen_ids"] for e in examples]
        return {
            "input_ids": pad(seqs, pad_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }

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
    def _pair_losses(self, rc: torch.Tensor, rr: torch.Tensor, margin: torch.Tensor | None) -> torch.Tensor:
        params = {}
        if self.cfg.loss == "bradley_terry" and self.cfg.label_smoothing:
            params["label_smoothing"] = self.cfg.label_smoothing
        losses = reward_loss(self.cfg.loss, rc, rr, margin=margin, **params)
        if self.cfg.centering:
            losses = losses + centering(rc, rr, coef=self.cfg.centering)
        return losses

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        rewards = policy(batch["input_ids"], batch["attention_mask"])  # [N, L]
        if "owner" in batch:
            return self._ranked_loss(rewards, batch)
        b = batch["index"].shape[0]
        if self.cfg.type == "preference":
            logits = (rewards[:b, 0] - rewards[b:, 0]) / 2
            losses = reward_loss("preference", logits)
            n = float(b)
            return losses.sum(), {
                "accuracy": (float((logits > 0).float().sum() + 0.5 * (logits == 0).float().sum()), n),
                "p_chosen": (float(torch.sigmoid(logits).sum()), n),
            }
        rc, rr = rewards[:b], rewards[b:]  # [B, K]
        margin = None
        if self.cfg.margin:
            margin = (batch["margin"] * batch["has_margin"] * self.cfg.margin_scale)[:, None]
        losses = self._pair_losses(rc, rr, margin)  # [B, K]
        k = rewards.shape[1]
        training = getattr(policy, "training", True)
        if self.boot is not None and training:
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
                list_loss = self._pair_losses(r[hi], r[lo], None).mean(0).sum()
                with torch.no_grad():
                    correct += float((r[hi] > r[lo]).float().mean(-1).sum())
                    n_pairs += len(hi)
            if self.cfg.regression:
                list_loss = list_loss + self.cfg.regression * regression(r, s[:, None].expand_as(r)).mean(0).sum()
            total = total + list_loss / k
        return total, {"accuracy": (correct, max(n_pairs, 1.0)), "pairs_per_list": (n_pairs, float(batch["n_lists"]))}
