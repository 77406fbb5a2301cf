"""Stage 4, advantage estimators, registered with what they need (:data:`ESTIMATORS`), and the shared
policy-gradient loss of stage 5.

An estimator is a class with class attributes saying what it needs and hooks the pipeline calls:

* ``outcome`` — advantages from sequence rewards (GRPO, Dr. GRPO, RLOO, ReMax, REINFORCE(++)): the KL
  in the reward (``rl.kl.in_reward``) is folded into each sample's reward before them, and samples whose
  advantage is exactly 0 can leave the update (``rl.update.skip_zero_advantage``);
* ``pairs`` — samples are consecutive pairs, kept or dropped whole (P3O, CoPG); ``critic`` — a learned
  value head trains with the policy (PPO);
* :meth:`Estimator.sequence_advantages` — ``[n]`` advantages of this process's samples from the rollout's
  rewards (gathered over processes through the strategy), before the update plan;
* :meth:`Estimator.token_advantages` — advantages that need the rows' log-probs or values (GAE, P3O's
  KL-shaped pairs, REINFORCE++'s token returns), after the plan's rows are annotated;
* :meth:`Estimator.annotations` — the token fields (:class:`~.batch.RolloutBatch`) the loss and
  ``token_advantages`` read; :meth:`Estimator.loss` and :meth:`Estimator.weight` — stage 5.

``ESTIMATORS.get(name)(cfg)`` builds one; ``ppo.py`` and ``pairwise.py`` register the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...core.registry import Registry
from ...engine.contract import Metrics
from ...models.logprobs import TargetLogProbs
from ...objectives import MovingBaseline, aggregate, corrected_policy_loss, gae, kl_in_reward, kl_penalty, outcome_advantages, policy_loss
from .batch import Rollout, RolloutBatch

if TYPE_CHECKING:
    from ...config import RLConfig
    from .pipeline import OnlineRL

ESTIMATORS: Registry[type["Estimator"]] = Registry("rl estimator")


class Estimator:
    """The base estimator: a policy-gradient loss on advantages filled by a subclass. ``needs`` (set when
    registered) names what it needs from the pipeline: ``groups``, ``pairs``, ``critic``,
    ``greedy_baseline``, ``token_returns``, ``reference``."""

    outcome = True
    pairs = False
    critic = False
    value_model: nn.Module | None = None  # the critic, when there is one (saved in checkpoints)

    def __init__(self, cfg: "RLConfig"):
        self.cfg = cfg

    # ---- what it needs ---------------------------------------------------------------------------
    def module(self, model: nn.Module) -> nn.Module:
        """What the update's forward runs: target log-probs at the sampling temperature."""
        return TargetLogProbs(model, self.cfg.sampling.temperature)

    def setup(self, algo: "OnlineRL", ctx) -> None:
        """Work before the first step (e.g. loading a dense reward model)."""

    def token_returns(self) -> bool:
        """Whether an outcome estimator's advantages are per-token returns from :meth:`token_advantages`
        (REINFORCE++ with the KL in the reward): its rewards are not KL-shaped per sample and no sample is
        skipped for a zero advantage."""
        return False

    def whitens(self) -> bool:
        """Whether :meth:`token_advantages` takes part in a rollout-wide sum over processes (whitening)."""
        return False

    def annotations(self, algo: "OnlineRL") -> list[str]:
        """Token fields the update rows need: old log-probs for more than one update per rollout (a single
        on-policy update uses its own detached log-probs: the same values), reference log-probs for the KL."""
        correcting = algo.cfg.off_policy.correction != "none"  # ρ = π_old/μ needs π_old even for one update
        out = ["old_logp"] if algo.updates_per_step() > 1 or correcting else []
        return out + (["ref_logp"] if algo.reference is not None else [])

    def annotators(self) -> dict[str, nn.Module]:
        """Modules for token fields of :meth:`annotations` that the pipeline does not provide itself."""
        return {}

    # ---- stage 4 ---------------------------------------------------------------------------------
    def sequence_advantages(self, algo: "OnlineRL", ctx, rollout: Rollout) -> Tensor | None:
        """``[n]`` advantages of this process's samples (None: computed per token later)."""
        return None

    def token_advantages(self, algo: "OnlineRL", ctx, rollout: Rollout, batch: RolloutBatch) -> None:
        """Fill ``batch.advantage`` or ``batch.token_advantage`` from the annotated rows."""

    # ---- stage 5 ---------------------------------------------------------------------------------
    def row_weight(self, completion_tokens: int) -> float:
        """:meth:`weight` of one row: its completion tokens (token mean) or 1 sequence."""
        return float(completion_tokens) if self.cfg.aggregation == "token_mean" else 1.0

    def weight(self, batch: dict[str, Tensor]) -> float:
        mask = batch["loss_mask"][:, 1:]
        if self.cfg.aggregation == "token_mean":
            return float(mask.sum())
        return float((mask.sum(-1) > 0).sum())

    def loss(self, algo: "OnlineRL", policy: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Metrics]:
        logp = algo.policy_logps(policy, batch)
        weight = self.weight(batch)
        total, metrics = policy_gradient_loss(self.cfg, logp, batch, weight, algo.reference is not None)
        return total * weight, metrics


def targets(batch: dict[str, Tensor]) -> Tensor:
    """The loss's token mask: completion tokens, never position 0 (no state predicts it)."""
    target = batch["loss_mask"].clone()
    target[:, 0] = 0
    return target


def policy_gradient_loss(cfg: "RLConfig", logp: Tensor, batch: dict[str, Tensor], weight: float, reference: bool) -> tuple[Tensor, Metrics]:
    """``rl.policy.loss`` aggregated by ``rl.policy.aggregation`` (mean over the micro-batch) plus, with
    the KL in the loss, ``beta`` times its aggregated per-token KL; the metrics as (sum, count) pairs."""
    target = targets(batch)
    name, aggregation = cfg.policy_loss, cfg.aggregation
    params: dict[str, Any] = {}
    if name in ("ppo_clip", "cispo", "p3o"):
        params["clip_high"] = cfg.policy.clip_high
    if name in ("ppo_clip", "p3o"):
        params["clip_low"] = cfg.policy.clip_low
    if name == "ppo_clip":
        params["dual_clip"] = cfg.policy.dual_clip
    agg_params = {"max_len": cfg.sampling.max_new_tokens} if aggregation == "seq_mean_token_sum_norm" else {}
    advantages = batch["token_adv"] if "token_adv" in batch else batch["advantage"]
    old_logp = batch["old_logp"] if "old_logp" in batch else logp.detach()
    correction = cfg.off_policy.correction
    if correction == "none":
        total, pg_metrics = policy_loss(name, logp, old_logp, advantages, target, aggregation=aggregation, **params, **agg_params)
    else:
        if "behaviour_logp" not in batch:
            raise ValueError(f"rl.off_policy.correction={correction}: the rollout engine reported no log-probs of its samples")
        total, pg_metrics = corrected_policy_loss(name, correction, logp, old_logp, batch["behaviour_logp"], advantages, target, aggregation=aggregation,
                                                  loss_params=params, correction_params=cfg.off_policy.params, aggregation_params=agg_params)
    metrics: Metrics = {f"policy/{k}": (v.detach() * weight, weight) for k, v in pg_metrics.items()}
    if reference:  # sequence-level k1 estimate of KL(pi || pi_ref) on the samples
        metrics["kl"] = (((logp.detach() - batch["ref_logp"]) * target).sum(), float(target.shape[0]))
    if reference and not cfg.kl.in_reward:
        kl_term = aggregate(kl_penalty(cfg.kl.estimator, logp, batch["ref_logp"]), target, aggregation, **agg_params)
        total = total + cfg.kl.beta * kl_term
        metrics["policy/kl_loss"] = (kl_term.detach() * weight, weight)
    if reference and cfg.env is not None and cfg.env.first_turn_kl > 0:
        # SCoRe stage I: the first turn's tokens held close to the reference, aggregated like the loss's tokens
        first = (batch["turn"] == 0).to(logp.dtype)
        kl_first = aggregate(kl_penalty(cfg.kl.estimator, logp, batch["ref_logp"]) * first, target, aggregation, **agg_params)
        total = total + cfg.env.first_turn_kl * kl_first
        metrics["policy/first_turn_kl"] = (kl_first.detach() * weight, weight)
    return total, metrics


def turn_credit(cfg: "RLConfig") -> bool:
    """``rl.env.credit: turn``: each turn's reward on its own turn's last token (token rewards)."""
    return cfg.env is not None and cfg.env.credit == "turn"


def sequence_or_token_rewards(cfg: "RLConfig", batch: RolloutBatch) -> Tensor:
    """What the token-level estimators put on the tokens: ``batch.reward [N]`` (on each row's last token), or
    with ``rl.env.credit: turn`` each turn's reward on that turn's last token (``batch.token_reward [N, T]``)."""
    return batch.token_reward if turn_credit(cfg) or batch.token_level else batch.reward


def whiten(ctx, adv: Tensor, mask: Tensor) -> Tensor:
    """Token advantages normalised to mean 0, std 1 (unbiased) over the valid tokens of every process's
    rollout (0 elsewhere); the counts and sums go through the strategy."""
    valid = mask > 0
    x = adv[valid].double()
    stats = torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64), x.sum(), (x * x).sum()])
    n, total, squares = ctx.strategy.sum(stats.to(ctx.strategy.device)).cpu()
    mean = total / n.clamp(min=1)
    std = ((squares - n * mean * mean).clamp(min=0) / (n - 1).clamp(min=1)).sqrt()
    return torch.where(valid, (adv - mean.float()) / (std.float() + 1e-8), torch.zeros_like(adv))


def join_whitening(ctx) -> None:
    """Take part in the other processes' whitening sum with nothing to add (this process kept no row)."""
    ctx.strategy.sum(torch.zeros(3, dtype=torch.float64, device=ctx.strategy.device))


# --------------------------------------------------------------------------------------------------
# outcome estimators: one advantage per sample from the rollout's sequence rewards
# --------------------------------------------------------------------------------------------------
class Outcome(Estimator):
    """An entry of :func:`alignkit.objectives.outcome_advantages` over the whole rollout's rewards."""

    def params(self, algo: "OnlineRL", ctx, rollout: Rollout) -> dict[str, Any]:
        return {}

    def sequence_advantages(self, algo, ctx, rollout):
        everyone = ctx.strategy.gather(rollout.reward)
        params = self.params(algo, ctx, rollout)
        return outcome_advantages(self.name, everyone, rollout.group_size, **params)[rollout.own]


@ESTIMATORS.register("grpo", needs=("groups",))
class GRPO(Outcome):
    name = "grpo"

    def params(self, algo, ctx, rollout):
        return {"std": self.cfg.advantage.std}


ESTIMATORS.register("dr_grpo", type("DrGRPO", (Outcome,), {"name": "dr_grpo", "__doc__": "Dr. GRPO: the group mean as baseline, no scale."}), needs=("groups",))
ESTIMATORS.register("rloo", type("RLOO", (Outcome,), {"name": "rloo", "__doc__": "RLOO: the mean of the group's other samples as baseline."}), needs=("groups",))


@ESTIMATORS.register("reinforce", needs=())
class Reinforce(Outcome):
    """REINFORCE with (``rl.advantage.moving_baseline``) a moving average of past rollouts' mean reward."""

    name = "reinforce"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.baseline = MovingBaseline(momentum=0.9)

    def params(self, algo, ctx, rollout):
        if not self.cfg.advantage.moving_baseline:
            return {}
        value = self.baseline.value  # before this rollout: a batch is not its own baseline
        self.baseline.update(ctx.strategy.gather(rollout.reward))
        return {"baseline": value}


@ESTIMATORS.register("remax", needs=("greedy_baseline",))
class ReMax(Outcome):
    """ReMax: the reward of the greedy completion of each prompt (not KL-shaped) as its baseline."""

    name = "remax"

    def params(self, algo, ctx, rollout):
        prompts = [e["prompt"] for e in rollout.examples]
        size = self.cfg.sampling.batch_size or len(prompts) * rollout.group_size
        greedy = algo.generate(ctx.model, ctx.tokenizer, prompts, 1, greedy=True, batch_size=size)
        context = {k: [e[k] for e in rollout.examples] for k in rollout.context()}
        baseline = algo.reward_source.score(prompts, [s.completion for s in greedy], **context).float().cpu()
        rollout.stats["greedy_reward"] = baseline.mean().item()
        return {"baseline": ctx.strategy.gather(baseline)}


class ReinforcePP(Outcome):
    """REINFORCE++: rewards whitened over the rollout; with the KL in the reward, per-token returns
    ``G_t = score - beta * sum_{s>=t} KL_s`` (GAE with gamma = lambda = 1 and no critic) whitened over the
    rollout's tokens (the paper, OpenRLHF). ``reinforce_pp_baseline``'s score is the reward minus its
    group's mean."""

    def token_returns(self) -> bool:
        return (self.cfg.kl.beta > 0 and self.cfg.kl.in_reward) or turn_credit(self.cfg)

    whitens = token_returns

    def sequence_advantages(self, algo, ctx, rollout):
        return None if self.token_returns() else super().sequence_advantages(algo, ctx, rollout)

    def token_advantages(self, algo, ctx, rollout, batch):
        if not self.token_returns():
            return
        scores = rollout.reward
        if self.name == "reinforce_pp_baseline":  # groups never span processes: this process's rewards
            scores = outcome_advantages("dr_grpo", scores, rollout.group_size)
        mask = batch.completion_mask.float()
        rewards = batch.token_reward if turn_credit(self.cfg) or batch.token_level else scores[batch.sample]
        beta = self.cfg.kl.beta if self.cfg.kl.in_reward else 0.0
        logp = batch.old_logp if batch.old_logp is not None else batch.zeros()
        ref = batch.ref_logp if batch.ref_logp is not None else logp
        token_rewards = kl_in_reward(rewards, logp, ref, mask, beta, kind=self.cfg.kl.estimator)
        returns, _ = gae(token_rewards, torch.zeros_like(mask), mask, gamma=1.0, lam=1.0)
        batch.token_advantage = whiten(ctx, returns, mask)


ESTIMATORS.register("reinforce_pp", type("REINFORCEPP", (ReinforcePP,), {"name": "reinforce_pp"}), needs=("token_returns",))
ESTIMATORS.register("reinforce_pp_baseline", type("REINFORCEPPBaseline", (ReinforcePP,), {"name": "reinforce_pp_baseline"}), needs=("groups", "token_returns"))


def build_estimator(cfg: "RLConfig") -> Estimator:
    from . import pairwise, ppo  # noqa: F401  (they register ppo, p3o, copg)

    return ESTIMATORS.get(cfg.estimator)(cfg)


__all__ = ["ESTIMATORS", "Estimator", "Outcome", "build_estimator", "join_whitening", "policy_gradient_loss", "sequence_or_token_rewards", "targets",
           "turn_credit", "whiten"]
