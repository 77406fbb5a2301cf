"""PPO for LMs: a critic (the policy's decoder with a scalar head) trained with the policy, advantages by
GAE over per-token rewards (the sequence reward on the last token, the KL to the reference on every
token with ``rl.kl.in_reward``, RTO's dense reward with ``rl.ppo.dense_reward_model``), MA-RLHF's
macro actions with ``rl.ppo.macro_len``, whitened over the rollout's tokens with ``rl.ppo.whiten``.

**Under a sharding strategy** (``fsdp2``, ``deepspeed_zero2``, ``deepspeed_zero3``) the critic is part of the
engine module, so the strategy shards it as it shards the policy (FSDP2: each of its decoder layers is a
shard group, like the policy's) and its value loss steps in the same optimizer. The values GAE reads are
forward-only work outside the wrapped forward, so, like the policy's old log-probs, they run on a
full-weights *critic replica* when the strategy keeps replicas (:meth:`Strategy.replica`), refreshed after
every training step by :meth:`Strategy.sync_replica` (a collective); ZeRO-2 keeps full parameters and reads
the critic itself. Checkpoints store the critic's full weights (:class:`CriticCheckpoint`) and a resume writes
them back through :meth:`Strategy.load_full` (FSDP2 shards, ZeRO's fp32 master partitions)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...models.logprobs import TargetLogProbs, _unwrap
from ...objectives import gae, kl_in_reward, macro_gae, value_loss
from .estimators import ESTIMATORS, Estimator, policy_gradient_loss, sequence_or_token_rewards, targets, whiten


class TargetValues(nn.Module):
    """Critic: a copy of the policy's decoder with a scalar head; values at target positions [B, T].

    The value of target token ``t`` is read from the hidden state at ``t-1`` (the state before the
    token is chosen), matching :class:`TargetLogProbs`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        core = _unwrap(model)
        self.decoder = copy.deepcopy(core.get_decoder())
        self.decoder.requires_grad_(True)
        self.head = nn.Linear(core.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, loss_mask):
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
        values = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        values[:, 1:] = self.head(hidden).squeeze(-1).float()
        return values * loss_mask


class ActorCritic(nn.Module):
    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.actor = TargetLogProbs(model, temperature)
        self.critic = TargetValues(model)

    def forward(self, input_ids, attention_mask, loss_mask):
        return self.actor(input_ids, attention_mask, loss_mask), self.critic(input_ids, attention_mask, loss_mask)


class CriticCheckpoint:
    """What checkpoints save and load as ``critic.safetensors``: the critic's full weights, whatever the strategy.

    ``state_dict`` (main process only) reads the replica when there is one (full and in step after every
    training step), else the critic itself; ``load_state_dict`` (every process) writes the full tensors into the
    wrapped critic through the strategy, and into the replica."""

    def __init__(self, estimator: "PPO"):
        self.estimator = estimator

    def state_dict(self) -> dict[str, torch.Tensor]:
        est = self.estimator
        return (est.critic_replica if est.critic_replica is not None else est.value_model).state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        est = self.estimator
        if est.strategy is None:
            est.value_model.load_state_dict(state)
        else:
            est.strategy.load_full(est.value_model, state)
        if est.critic_replica is not None:
            est.critic_replica.load_state_dict(state)


@ESTIMATORS.register("ppo", needs=("critic",))
class PPO(Estimator):
    name = "ppo"
    outcome = False
    critic = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.value_model: TargetValues | None = None
        self.critic_replica: TargetValues | None = None  # sharded strategies: the full-weights critic values run on
        self.strategy = None
        self.dense_reward: TargetLogProbs | None = None

    def module(self, model):
        combined = ActorCritic(model, self.cfg.sampling.temperature)
        self.value_model = combined.critic
        if self.strategy is not None:  # before wrapping, while the critic's weights are whole
            self.critic_replica = self.strategy.replica(combined.critic)
        return combined

    def checkpoint_module(self) -> CriticCheckpoint | None:
        return CriticCheckpoint(self) if self.value_model is not None else None

    def after_step(self, algo, ctx, step):
        if self.critic_replica is not None:  # a collective: every process took the same updates
            ctx.strategy.sync_replica(self.value_model, self.critic_replica)

    def setup(self, algo, ctx):
        self.strategy = ctx.strategy
        if self.cfg.ppo.dense_reward_model:
            from ...models.loading import load_policy_for_inference

            dense = load_policy_for_inference(self.cfg.ppo.dense_reward_model).to(ctx.device)
            dense.requires_grad_(False)
            self.dense_reward = TargetLogProbs(dense, self.cfg.sampling.temperature)

    def shapes_kl(self, algo) -> bool:
        return algo.reference is not None and self.cfg.kl.in_reward

    def whitens(self) -> bool:
        return self.cfg.ppo.whiten

    def annotations(self, algo):
        out = super().annotations(algo)
        if self.shapes_kl(algo) and "old_logp" not in out:
            out.append("old_logp")
        out.append("values")
        return out + (["dense_logp"] if self.dense_reward is not None else [])

    def annotators(self) -> dict[str, nn.Module]:
        critic = self.critic_replica if self.critic_replica is not None else self.value_model
        return {"values": critic, **({"dense_logp": self.dense_reward} if self.dense_reward is not None else {})}

    def token_advantages(self, algo, ctx, rollout, batch):
        cfg = self.cfg
        mask = batch.completion_mask.float()
        zeros = batch.zeros()
        logp = batch.old_logp if batch.old_logp is not None else zeros
        ref = batch.ref_logp if batch.ref_logp is not None else zeros
        beta = cfg.kl.beta if self.shapes_kl(algo) else 0.0
        token_rewards = kl_in_reward(sequence_or_token_rewards(cfg, batch), logp, ref, mask, beta, kind=cfg.kl.estimator)
        if batch.dense_logp is not None:
            # RTO: r_t += beta_d * (log pi_dpo(a_t) - log pi_ref(a_t)) on every completion token.
            token_rewards = token_rewards + cfg.ppo.dense_reward_beta * (batch.dense_logp - ref) * mask
        if cfg.ppo.macro_len:
            adv, returns = macro_gae(token_rewards, batch.values, mask, cfg.ppo.macro_len, gamma=cfg.ppo.gamma, lam=cfg.ppo.lam)
        else:
            adv, returns = gae(token_rewards, batch.values, mask, gamma=cfg.ppo.gamma, lam=cfg.ppo.lam)
        if cfg.ppo.whiten:
            adv = whiten(ctx, adv, mask)
        batch.token_advantage, batch.returns = adv, returns

    def loss(self, algo, policy, batch):
        cfg = self.cfg
        logp, values = policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        weight = self.weight(batch)
        total, metrics = policy_gradient_loss(cfg, logp, batch, weight, algo.reference is not None)
        agg_params = {"max_len": cfg.sampling.max_new_tokens} if cfg.aggregation == "seq_mean_token_sum_norm" else {}
        vf, _ = value_loss(values, batch["old_values"], batch["returns"], targets(batch), clip=cfg.ppo.value_clip, aggregation=cfg.aggregation, **agg_params)
        metrics["critic/value_loss"] = (vf.detach() * weight, weight)
        return (total + cfg.ppo.vf_coef * vf) * weight, metrics
