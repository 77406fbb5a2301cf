"""``reward.type: arm``: GenARM's autoregressive reward model (Xu et al. 2025, "GenARM: Reward Guided
Generation with Autoregressive Reward Model for Test-time Alignment").

The model is a causal LM ``pi_r`` whose token log-probabilities sum to the reward,
``r(x, y) = beta_r * sum_t log pi_r(y_t | x, y_<t)``, trained from preference pairs with the Bradley-Terry loss

    L = -log sigmoid(beta_r * (sum_t log pi_r(y_c,t | .) - sum_t log pi_r(y_r,t | .)))

(``reward.arm_beta`` is ``beta_r``). It is saved as a plain causal-LM folder (``config.json`` carries
``reward_type: arm`` and ``arm_beta``), so it loads anywhere a model does; decoding with
``pi_base * pi_r^(1/beta)`` is the ``genarm`` strategy (:mod:`alignkit.decoding.genarm`), which keeps the ARM's KV
cache in lockstep with the base model's.
"""

from __future__ import annotations

import torch

from ...data.collate import collate_pairs
from ...engine.contract import Metrics
from ...objectives.reward import reward_loss
from .base import REWARD_TYPES, RewardModelling


def arm_rewards(token_logps: torch.Tensor, beta_r: float) -> torch.Tensor:
    """``[B]`` ARM rewards ``beta_r * sum_t log pi_r(y_t|.)`` from target log-probs ``[B, T]`` (0 off the mask)."""
    return beta_r * token_logps.sum(-1)


@REWARD_TYPES.register("arm")
class ARMRewardModelling(RewardModelling):
    """An autoregressive reward model: a causal LM trained with BT on its summed completion log-probs."""

    reward_type = "arm"
    data_kind = "pair"

    def __init__(self, recipe):
        super().__init__(recipe)
        if self.cfg.ensemble > 1:
            raise ValueError("reward.type=arm is trained without reward.ensemble")
        if recipe.data.kind not in ("auto", "pair"):
            raise ValueError(f"reward.type=arm trains on pairs (data.kind auto or pair), not data.kind={recipe.data.kind}")

    def load_model(self, path, model_config, adapter=None):
        from ...models.loading import load_causal_lm

        model = load_causal_lm(path, model_config, adapter=adapter)
        model.config.reward_type = "arm"
        model.config.arm_beta = float(self.cfg.arm_beta)
        return model

    def module(self, model):
        from ...models.logprobs import TargetLogProbs

        return TargetLogProbs(model)

    def collate(self, examples, pad_id):
        return collate_pairs(examples, pad_id)

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        logps = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])  # [2B, T]
        rewards = arm_rewards(logps, self.cfg.arm_beta)
        b = batch["index"].shape[0]
        rc, rr = rewards[:b], rewards[b:]
        params = {"label_smoothing": self.cfg.label_smoothing} if self.cfg.label_smoothing else {}
        losses = reward_loss("bradley_terry", rc, rr, **params)
        with torch.no_grad():
            d = (rc - rr).detach()
            n = float(b)
            metrics: Metrics = {"accuracy": (self.accuracy(d), n), "margin": (float(d.sum()), n),
                                "chosen": (float(rc.detach().sum()), n), "rejected": (float(rr.detach().sum()), n)}
        return losses.sum(), metrics
