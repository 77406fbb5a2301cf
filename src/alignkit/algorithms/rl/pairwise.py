"""Estimators on pairs of samples of one prompt (consecutive samples ``2k, 2k+1``, kept or dropped whole).

* ``p3o`` — P3O (Wu et al. 2023): KL-shaped sequence rewards ``r~ = r - beta * log(pi_old / pi_ref)``
  (``rl.kl.in_reward``), pairwise advantages ``A = ±(r~_1 - r~_2) / 2``, trained with the trajectory-ratio
  ``p3o`` policy loss and ``seq_mean_token_sum`` (what ``rl.policy`` ``auto`` resolves to).
* ``copg`` — Contrastive Policy Gradient (Flet-Berliac et al. 2024): its own pairwise regression loss
  (:func:`alignkit.objectives.copg_loss`), no importance weights, so samples may come from the frozen
  starting policy (``rl.sampling.behavior: reference``); the update's mean is over pairs.
"""

from __future__ import annotations

from ...objectives import copg_loss, pairwise_advantages
from .estimators import ESTIMATORS, Estimator, targets


@ESTIMATORS.register("p3o", needs=("pairs",))
class P3O(Estimator):
    name = "p3o"
    outcome = False
    pairs = True

    def shapes_kl(self, algo) -> bool:
        return algo.reference is not None and self.cfg.kl.in_reward

    def annotations(self, algo):
        out = super().annotations(algo)
        return out + (["old_logp"] if self.shapes_kl(algo) and "old_logp" not in out else [])

    def token_advantages(self, algo, ctx, rollout, batch):
        shaped = batch.reward
        if self.shapes_kl(algo):
            shaped = batch.reward - self.cfg.kl.beta * (batch.old_logp - batch.ref_logp).sum(-1)
        batch.advantage = pairwise_advantages(shaped)


@ESTIMATORS.register("copg", needs=("pairs", "reference"))
class CoPG(Estimator):
    name = "copg"
    outcome = False
    pairs = True

    def weight(self, batch):
        return float(batch["loss_mask"].shape[0] // 2)

    def loss(self, algo, policy, batch):
        target = targets(batch)
        logp = algo.policy_logps(policy, batch)
        seq = (logp * target).sum(-1)
        ref = (batch["ref_logp"] * target).sum(-1)
        per_pair = copg_loss(seq, ref, batch["reward"], self.cfg.kl.beta)
        return per_pair.sum(), {"policy/copg_loss": (per_pair.detach().sum(), float(per_pair.numel()))}
