"""Online RL on the shared engine: GRPO, Dr.GRPO, DAPO, RLOO, ReMax, REINFORCE(++), PPO.

One step of training (``train.batch_size`` prompts over all processes):

1. **Rollout.** Each process samples ``rl.group_size`` completions for each of its prompts with the
   current policy (the group of a prompt never spans processes).
2. **Score.** The reward source (``rl.reward``: a built-in task's gold reward, a reward model folder, a
   ``module:function``, an ensemble, ...) scores every completion. DAPO's overlong handling can filter
   or shape completions that hit ``max_new_tokens`` without stopping.
3. **Advantages.** ``rl.estimator`` names an entry of :func:`alignkit.objectives.outcome_advantages`
   (``grpo``, ``dr_grpo``, ``rloo``, ``remax`` — with the greedy completion's reward as baseline —,
   ``reinforce``, ``reinforce_pp``, ``reinforce_pp_baseline``) or ``ppo`` (GAE over per-token rewards
   with a learned critic). DAPO's dynamic sampling drops groups whose rewards are all equal.
4. **Update.** ``rl.epochs`` passes over the rollout in ``rl.mini_batches`` optimizer steps each, with
   ``rl.policy_loss`` (``ppo_clip`` with asymmetric/dual clip, ``cispo``, ``gspo``, ``reinforce``)
   aggregated by ``rl.aggregation``. KL to the reference (``rl.beta`` > 0) is either a per-token loss term
   (``rl.kl_in: loss``, GRPO-style, estimator ``rl.kl_estimator``) or folded into per-token rewards
   (``rl.kl_in: reward``: PPO's per-token rewards; for the outcome estimators each sample's reward
   minus ``beta`` times its summed KL, before the group statistics). ``rl.beta = 0`` loads no
   reference model. Samples whose advantage is exactly 0 are left out of the forward/backward
   (``rl.skip_zero_advantage``) with their weight kept in the update's denominator.

Log-probs: ``old_logp`` is recomputed by the trainer's kernel at the sampling temperature (not taken
from the sampler), so the first update's ratio is exactly 1.
"""

from __future__ import annotations

import copy
import math
import statistics
from typing import Any

import torch
from torch import nn

from ..data.collate import collate_shared_prefix, pad
from ..models.logprobs import TargetLogProbs, _unwrap, mask_for
from ..objectives import (
    aggregate,
    copg_loss,
    gae,
    kl_in_reward,
    kl_penalty,
    macro_gae,
    outcome_advantages,
    pairwise_advantages,
    policy_loss,
    value_loss,
)
from ..rewards.transforms import apply_transform
from ..rollout.generate import generate
from ..engine.contract import Algorithm, Metrics
from ..models.reference import Reference


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


class OnlineRL(Algorithm):
    name = "rl"
    data_kind = "prompt"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.rl
        self.name = self.cfg.estimator
        self.reference: Reference | None = None
        self.critic: TargetValues | None = None
        self.reward_source = None
        self.dense_reward: TargetLogProbs | None = None
        self.pairwise = self.cfg.estimator in ("p3o", "copg")
        self.outcome = self.cfg.estimator not in ("ppo", "p3o", "copg")  # advantages from sequence rewards
        # GRPO-style groups share their prompt's forward in the update (packed rows); PPO's critic is padded
        self.share_prompts = self.cfg.share_prompts and self.cfg.estimator != "ppo"
        if self.cfg.estimator == "p3o":  # trajectory-level ratio, mean over sequences
            self.cfg = self.cfg.model_copy(update={"policy_loss": "p3o", "aggregation": "seq_mean_token_sum"})

    # ----------------------------------------------------------------------------------------------
    def module(self, model):
        # the trainer scores samples at the sampling temperature, as the sampler drew them
        if self.cfg.estimator == "ppo":
            combined = ActorCritic(model, self.cfg.temperature)
            self.critic = combined.critic
            return combined
        return TargetLogProbs(model, self.cfg.temperature)

    def updates_per_step(self) -> int:
        return self.cfg.epochs * self.cfg.mini_batches

    @torch.no_grad()
    def evaluate(self, ctx, examples) -> dict[str, float]:
        """Mean reward (and, on a built-in task, gold reward) of samples on held-out prompts."""
        if not examples:
            return {}
        prompts = [e["prompt"] for e in examples]
        n = self.cfg.eval_samples
        samples = self._generate(ctx.model, ctx.tokenizer, prompts, n, seed=12345, job_ids=_job_ids(examples, n))
        context = {k: [e[k] for e in examples for _ in range(n)] for k in examples[0] if k not in ("prompt", "prompt_ids", "row", "index")}
        rewards = self.reward_source.score([s.prompt for s in samples], [s.completion for s in samples], **context)
        out = {"reward": rewards.float().mean().item(), "completion_length": statistics.fmean(len(s.completion_ids) for s in samples)}
        if self.recipe.data.eval is None:
            from ..tasks import get_task

            task = get_task(self.recipe.task)
            out["gold_reward"] = statistics.fmean(task.gold_rewards([s.prompt for s in samples], [s.completion for s in samples]))
        return out

    def _generate(self, model, tokenizer, prompts, n: int, **kwargs):
        """Samples with the recipe's sampling settings and generation backend."""
        cfg = self.cfg
        kwargs.setdefault("batch_size", cfg.generation_batch_size or len(prompts) * n)
        return generate(model, tokenizer, prompts, n=n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        backend=cfg.generation_backend, vllm_options=cfg.vllm, **kwargs)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"critic": self.critic} if self.critic is not None else {}

    def unit_key(self, example):
        return example.get("unit")

    def unit_rows(self, unit):
        if self.share_prompts and "unit" in unit[0]:  # one packed row: the prompt once, then every completion
            return [unit[0]["prompt_len"] + sum(len(e["ids"]) - e["prompt_len"] for e in unit)]
        return super().unit_rows(unit)

    def setup(self, ctx) -> None:
        from ..models.logprobs import supports_packing
        from ..rewards.sources import build_reward_source

        if self.share_prompts and not supports_packing(ctx.model):
            self.share_prompts = False  # e.g. flash-attention takes no custom 4-D mask

        self.dist = ctx.strategy
        spec = self.cfg.reward if self.cfg.reward != "gold" else f"gold:{self.recipe.task.name}"
        self.reward_source = build_reward_source(spec)
        if self.cfg.dense_reward_model:
            from ..models.loading import load_policy_for_inference

            dense = load_policy_for_inference(self.cfg.dense_reward_model).to(ctx.device)
            dense.requires_grad_(False)
            self.dense_reward = TargetLogProbs(dense, self.cfg.temperature)
        if self.cfg.beta > 0 or self.cfg.dense_reward_model or self.cfg.behavior == "reference":
            self.reference = ctx.reference(keep=True, temperature=self.cfg.temperature)

    def collate(self, examples, pad_id):
        batch = {
            "input_ids": pad([e["ids"] for e in examples], pad_id),
            "attention_mask": pad([[1] * len(e["ids"]) for e in examples], 0),
            "loss_mask": pad([e["mask"] for e in examples], 0),
        }
        for key in ("old_logp", "ref_logp", "token_adv", "returns", "old_values"):
            if key in examples[0]:
                rows = [e[key] for e in examples]
                width = batch["input_ids"].shape[1]
                out = torch.zeros(len(rows), width, dtype=torch.float32)
                for i, r in enumerate(rows):
                    out[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
                batch[key] = out
        for key in ("advantage", "reward"):
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
        if self.share_prompts and "unit" in examples[0]:
            groups: list[tuple[list[int], list[list[int]]]] = []
            previous = None
            for e in examples:
                if e["unit"] != previous:
                    groups.append((e["ids"][: e["prompt_len"]], []))
                    previous = e["unit"]
                groups[-1][1].append(e["ids"][e["prompt_len"] :])
            packed = collate_shared_prefix(groups, pad_id)
            batch.update({f"packed_{k}": v for k, v in packed.items()})
        return batch

    def _policy_logps(self, policy, batch) -> torch.Tensor:
        """Target log-probs [N, T] in the per-sequence layout; from prompt-sharing packed rows when present."""
        if "packed_input_ids" not in batch:
            return policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        inner = getattr(policy, "module", policy)  # DDP
        mask = mask_for(inner.model, batch["packed_segment"], batch["packed_group"])
        packed = policy(batch["packed_input_ids"], mask, batch["packed_loss_mask"], batch["packed_position_ids"], batch["packed_source_index"])
        values = packed[batch["packed_loss_mask"].bool()]
        out = torch.zeros(batch["input_ids"].shape, dtype=values.dtype, device=values.device)
        return out.index_put((batch["packed_target_seq"], batch["packed_target_pos"]), values)

    def weight(self, batch) -> float:
        """What the update's mean divides by: this micro-batch's tokens (or sequences, pairs) plus those
        of the zero-advantage samples it stands for (see :meth:`_skip_zero_advantage`)."""
        return self._trained_weight(batch) + batch.get("skipped_weight", 0.0)

    def _trained_weight(self, batch) -> float:
        mask = batch["loss_mask"][:, 1:]
        if self.cfg.estimator == "copg":
            return float(mask.shape[0] // 2)
        if self.cfg.aggregation == "token_mean":
            return float(mask.sum())
        return float((mask.sum(-1) > 0).sum())

    def _item_weight(self, item) -> float:
        """:meth:`_trained_weight` of one sample (its completion tokens, or 1 sequence)."""
        return float(len(item["ids"]) - item["prompt_len"]) if self.cfg.aggregation == "token_mean" else 1.0

    def shapes_outcome_rewards(self) -> bool:
        """KL in the reward (``rl.kl_in: reward``, ``rl.beta > 0``) for an outcome estimator (GRPO, RLOO, ...)."""
        return self.cfg.beta > 0 and self.cfg.kl_in == "reward" and self.outcome

    def token_level_returns(self) -> bool:
        """REINFORCE++ with the KL in the reward: per-token returns ``r - beta * sum_{s>=t} KL_s`` whitened over
        the rollout's tokens (the REINFORCE++ paper, OpenRLHF), instead of one shaped reward per sample."""
        return self.shapes_outcome_rewards() and self.cfg.estimator in ("reinforce_pp", "reinforce_pp_baseline")

    def skips_zero_advantage(self) -> bool:
        """Whether a sample with advantage exactly 0 contributes exactly nothing to the update: true for the
        outcome estimators when no KL term sits in the loss (every policy loss is then ``A * f(ratio)``)."""
        kl_loss = self.cfg.beta > 0 and self.cfg.kl_in == "loss"
        return self.cfg.skip_zero_advantage and self.outcome and not self.token_level_returns() and not kl_loss

    def _skip_zero_advantage(self, chunk: list[list[dict]]) -> tuple[list[list[dict]], float, int]:
        """The units of one optimizer step without their zero-advantage samples, the weight those samples
        carry (kept in the update's denominator, so the mean is the one over every sample) and how many
        were left out. Their loss terms and gradients are exactly 0 (``-A * ratio`` with ``A = 0`` for any
        ratio), so leaving their forward and backward out changes nothing but the work done. A step whose
        samples all have zero advantage keeps its smallest unit, so the optimizer still steps (AdamW moves
        the weights on momentum and decay even with a zero gradient, as an unskipped run would)."""
        if not self.skips_zero_advantage():
            return chunk, 0.0, 0
        trained = [[it for it in unit if it["advantage"] != 0.0] for unit in chunk]
        if not any(trained):
            smallest = min(range(len(chunk)), key=lambda u: sum(len(it["ids"]) for it in chunk[u]))
            trained[smallest] = chunk[smallest]
        kept = {id(it) for unit in trained for it in unit}
        left_out = [it for unit in chunk for it in unit if id(it) not in kept]
        return [u for u in trained if u], sum(self._item_weight(it) for it in left_out), len(left_out)

    # ----------------------------------------------------------------------------------------------
    # rollout
    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, ctx, examples: list[dict[str, Any]]) -> tuple[list[list[dict]], dict[str, float]]:
        cfg = self.cfg
        model = ctx.model
        prompts = [e["prompt"] for e in examples]
        g = cfg.group_size
        # the same seed on every process: a sample's random stream is named by its example's global index
        # (job ids), so 1 process and N processes draw the same completions for the same prompts
        seed = ctx.seed * 100003 + ctx.step * 101
        sampler, sampler_context = model, _null
        if cfg.behavior == "reference":  # off-policy rollouts from the frozen starting policy
            sampler, sampler_context = self.reference.model, self.reference.context
        with sampler_context():
            samples = self._generate(sampler, ctx.tokenizer, prompts, g, seed=seed, job_ids=_job_ids(examples, g))
        sample_prompts = [s.prompt for s in samples]
        completions = [s.completion for s in samples]
        context = {k: [e[k] for e in examples for _ in range(g)] for k in examples[0] if k not in ("prompt", "prompt_ids", "row", "index")}
        rewards = self.reward_source.score(sample_prompts, completions, **context).float().cpu()
        raw_rewards = rewards.clone()
        # statistics over the rollout (reward whitening, batch std, moving baselines) span every process's
        # samples: the step's rewards in process order are the 1-process rollout's, in its order
        dist, own = ctx.strategy, slice(ctx.strategy.rank * len(samples), (ctx.strategy.rank + 1) * len(samples))
        if cfg.reward_transforms:
            everyone = dist.gather(rewards)
            for transform in cfg.reward_transforms:  # e.g. PPO-max's reward clipping and normalisation
                everyone = apply_transform(transform["name"], everyone, **{k: v for k, v in transform.items() if k != "name"}).float()
            rewards = everyone[own]
        finished = torch.tensor([s.finished for s in samples])
        if cfg.overlong == "shape":
            # DAPO soft overlong punishment over the last `overlong_buffer` tokens of the budget.
            lengths = torch.tensor([len(s.completion_ids) for s in samples], dtype=torch.float32)
            start = cfg.max_new_tokens - cfg.overlong_buffer
            rewards = rewards - torch.clamp((lengths - start) / max(cfg.overlong_buffer, 1), 0, 1) * cfg.overlong_penalty
        stats: dict[str, float] = {
            "reward": raw_rewards.mean().item(),
            "reward_std": raw_rewards.std().item() if len(raw_rewards) > 1 else 0.0,
            "completion_length": statistics.fmean(len(s.completion_ids) for s in samples),
            "finished": finished.float().mean().item(),
        }
        keep = torch.ones(len(samples), dtype=torch.bool)
        if cfg.dynamic_sampling:
            grouped = rewards.view(-1, g)
            varied = (grouped.max(1).values - grouped.min(1).values) > 0
            keep = varied.repeat_interleave(g)
            stats["groups_kept"] = varied.float().mean().item()
        if cfg.overlong == "filter":
            keep = keep & finished
        if self.pairwise:  # a pair is kept or dropped whole
            keep = keep.view(-1, 2).all(1).repeat_interleave(2)
        # ---- token-level quantities ----------------------------------------------------------------
        items = []
        for i, s in enumerate(samples):
            if not s.completion_ids or not (keep[i] or self.shapes_outcome_rewards()):
                continue
            ids = s.prompt_ids + s.completion_ids
            item = {"ids": ids, "mask": [0] * len(s.prompt_ids) + [1] * len(s.completion_ids), "prompt_len": len(s.prompt_ids), "sample": i}
            if self.share_prompts or self.pairwise:  # a group (or pair) stays in one micro-batch
                item["unit"] = i // (g if self.share_prompts else 2)
            items.append(item)
        if self.shapes_outcome_rewards():
            # KL in the reward for an outcome estimator: r_i - beta * sum_t KL_t(pi_old || pi_ref) on the sample's
            # tokens (verl's use_kl_in_reward), before the group statistics; samples with no token keep r_i.
            self._annotate(ctx, items, "old_logp", TargetLogProbs(model, cfg.temperature), _null)
            self._annotate(ctx, items, "ref_logp", self.reference, _null)
            kl = torch.zeros_like(rewards)
            for it in items:
                logp, ref = torch.tensor(it["old_logp"]), torch.tensor(it["ref_logp"])
                kl[it["sample"]] = kl_penalty(cfg.kl_estimator, logp, ref)[it["prompt_len"] :].sum()
            stats["kl_penalty"] = (cfg.beta * kl).mean().item()
            if not self.token_level_returns():  # REINFORCE++ puts the KL on each token below instead
                rewards = rewards - cfg.beta * kl
            items = [it for it in items if keep[it["sample"]]]
        # ---- advantages ---------------------------------------------------------------------------
        params: dict[str, Any] = {}
        if cfg.estimator == "grpo":
            params["std"] = cfg.std
        if cfg.estimator == "remax":  # the greedy completion's reward, not KL-shaped
            greedy = self._generate(model, ctx.tokenizer, prompts, 1, greedy=True, batch_size=cfg.generation_batch_size or len(prompts) * g)
            greedy_context = {k: [e[k] for e in examples] for k in context}
            params["baseline"] = self.reward_source.score(prompts, [s.completion for s in greedy], **greedy_context).float().cpu()
            stats["greedy_reward"] = params["baseline"].mean().item()
            params["baseline"] = dist.gather(params["baseline"])
        if cfg.estimator == "reinforce" and cfg.moving_baseline:
            params["baseline"] = self._moving_baseline(dist.gather(rewards))
        advantages = None
        if self.outcome and not self.token_level_returns():
            advantages = outcome_advantages(cfg.estimator, dist.gather(rewards), g, **params)[own]
        for it in items:
            it["reward"] = rewards[it["sample"]].item()
            if advantages is not None:
                it["advantage"] = advantages[it["sample"]].item()
        if self.token_level_returns() and items:
            # the sequence score sits on the last token (REINFORCE++-baseline: minus its group's mean first)
            scores = outcome_advantages("dr_grpo", rewards, g) if cfg.estimator == "reinforce_pp_baseline" else rewards
            self._token_returns(items, scores[[it["sample"] for it in items]])
        stats["kept"] = len(items) / max(1, len(samples))
        if not items:
            if self._whitens_tokens():  # take part in the other processes' whitening all-reduce
                self.dist.sum(torch.zeros(3, dtype=torch.float64, device=self.dist.device))
            return [], stats
        # ---- optimizer steps: units (pairs / groups stay whole) shuffled into mini-batches ----------
        units: list[list[dict]] = []
        for it in items:
            if units and it.get("unit") is not None and units[-1][-1].get("unit") == it["unit"]:
                units[-1].append(it)
            else:
                units.append([it])
        order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed)).tolist()
        per = math.ceil(len(units) / cfg.mini_batches)
        chunks, skipped_weights, skipped = [], [], 0
        for start in range(0, len(units), per):
            chunk, weight, n = self._skip_zero_advantage([units[u] for u in order[start : start + per]])
            chunks.append(chunk)
            skipped_weights.append(weight)
            skipped += n
        if self.skips_zero_advantage():
            stats["zero_advantage_skipped"] = skipped / len(items)
        items = [it for chunk in chunks for unit in chunk for it in unit]  # what the update trains on
        # old log-probs are needed for more than one update per rollout, and for KL-shaped rewards; with a
        # single on-policy update they equal the update's own log-probs (detached), so that pass is skipped.
        shaped_kl = self.reference is not None and cfg.estimator in ("ppo", "p3o") and cfg.kl_in == "reward"
        if (self.updates_per_step() > 1 or shaped_kl) and "old_logp" not in items[0]:
            self._annotate(ctx, items, "old_logp", TargetLogProbs(model, cfg.temperature), _null)
        if self.reference is not None and "ref_logp" not in items[0]:
            self._annotate(ctx, items, "ref_logp", self.reference, _null)
        if shaped_kl:
            kl = [sum(a - b for a, b in zip(it["old_logp"], it["ref_logp"])) for it in items]
        if cfg.estimator == "p3o":
            # KL-shaped sequence rewards r~ = r - beta * log(pi_old / pi_ref), then A = ±(r~_1 - r~_2)/2.
            shaped = torch.tensor([it["reward"] - cfg.beta * k for it, k in zip(items, kl if shaped_kl else [0.0] * len(items))])
            for it, a in zip(items, pairwise_advantages(shaped).tolist()):
                it["advantage"] = a
        if self.dense_reward is not None:
            self._annotate(ctx, items, "dense_logp", self.dense_reward, _null)
        if cfg.estimator == "ppo":
            self._annotate(ctx, items, "old_values", self.critic, _null)
            self._ppo_advantages(items)
        updates = []
        for _ in range(cfg.epochs):
            for chunk, weight in zip(chunks, skipped_weights):
                flat = [it for unit in chunk for it in unit]
                batches = ctx.micro_batches(flat, list(range(len(flat))))
                batches[0]["skipped_weight"] = weight
                updates.append(batches)
        return updates, stats

    def _annotate(self, ctx, items, key, module, context) -> None:
        """Per-token values of ``module`` (log-probs or critic values) for every item, without grad."""
        size = ctx.micro_batch_size or 64
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            batch = ctx.collate(chunk)
            with context(), ctx.autocast():
                out = module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
            for item, row in zip(chunk, out.float().cpu().tolist()):
                item[key] = row[: len(item["ids"])]

    @staticmethod
    def _token_tensors(items, *keys) -> tuple[torch.Tensor, ...]:
        """The completion mask and each per-token annotation in ``keys`` as padded ``[N, T]`` tensors (zeros
        where an item lacks the annotation)."""
        mask = pad([it["mask"] for it in items], 0).float()
        out = [torch.zeros_like(mask) for _ in keys]
        for i, it in enumerate(items):
            for tensor, key in zip(out, keys):
                if key in it:
                    tensor[i, : len(it["ids"])] = torch.tensor(it[key])
        return (mask, *out)

    def _whitens_tokens(self) -> bool:
        return (self.cfg.estimator == "ppo" and self.cfg.whiten_advantages) or self.token_level_returns()

    def _whiten(self, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token advantages normalised to mean 0, std 1 (unbiased) over the valid tokens of every process's
        rollout (0 elsewhere)."""
        valid = mask > 0
        x = adv[valid].double()
        n, total, squares = self.dist.sum(torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64), x.sum(), (x * x).sum()]).to(self.dist.device)).cpu()
        mean = total / n.clamp(min=1)
        std = ((squares - n * mean * mean).clamp(min=0) / (n - 1).clamp(min=1)).sqrt()
        return torch.where(valid, (adv - mean.float()) / (std.float() + 1e-8), torch.zeros_like(adv))

    def _token_returns(self, items, scores: torch.Tensor) -> None:
        """REINFORCE++: ``G_t = score - beta * sum_{s>=t} KL_s`` (token rewards ``-beta KL_t`` plus the score on the
        last token, summed to the end: GAE with gamma = lambda = 1 and no critic), whitened over the rollout."""
        mask, logp, ref = self._token_tensors(items, "old_logp", "ref_logp")
        token_rewards = kl_in_reward(scores, logp, ref, mask, self.cfg.beta, kind=self.cfg.kl_estimator)
        returns, _ = gae(token_rewards, torch.zeros_like(mask), mask, gamma=1.0, lam=1.0)
        adv = self._whiten(returns, mask)
        for i, it in enumerate(items):
            it["token_adv"] = adv[i, : len(it["ids"])].tolist()

    def _ppo_advantages(self, items) -> None:
        cfg = self.cfg
        # old_logp is present whenever the KL is shaped into the reward, dense_logp with RTO
        batch_mask, values, logp, ref, dense = self._token_tensors(items, "old_values", "old_logp", "ref_logp", "dense_logp")
        scores = torch.tensor([it["reward"] for it in items])
        beta = cfg.beta if (self.reference is not None and cfg.kl_in == "reward") else 0.0
        token_rewards = kl_in_reward(scores, logp, ref, batch_mask, beta, kind=cfg.kl_estimator)
        if self.dense_reward is not None:
            # RTO: r_t += beta_d * (log pi_dpo(a_t) - log pi_ref(a_t)) on every completion token.
            token_rewards = token_rewards + cfg.dense_reward_beta * (dense - ref) * batch_mask
        if cfg.macro_len:
            adv, returns = macro_gae(token_rewards, values, batch_mask, cfg.macro_len, gamma=cfg.gamma, lam=cfg.lam)
        else:
            adv, returns = gae(token_rewards, values, batch_mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            adv = self._whiten(adv, batch_mask)
        for i, it in enumerate(items):
            n = len(it["ids"])
            it["token_adv"] = adv[i, :n].tolist()
            it["returns"] = returns[i, :n].tolist()

    def _moving_baseline(self, rewards: torch.Tensor) -> float:
        value = getattr(self, "_baseline", None)
        baseline = 0.0 if value is None else value
        mean = rewards.mean().item()
        self._baseline = mean if value is None else 0.9 * value + 0.1 * mean
        return baseline

    # ----------------------------------------------------------------------------------------------
    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        cfg = self.cfg
        mask = batch["loss_mask"]
        target = mask.clone()
        target[:, 0] = 0
        if cfg.estimator == "ppo":
            logp, values = policy(batch["input_ids"], batch["attention_mask"], mask)
        else:
            logp = self._policy_logps(policy, batch)
        if cfg.estimator == "copg":
            seq = (logp * target).sum(-1)
            ref = (batch["ref_logp"] * target).sum(-1)
            per_pair = copg_loss(seq, ref, batch["reward"], cfg.beta)
            n_pairs = float(per_pair.numel())
            return per_pair.sum(), {"policy/copg_loss": (per_pair.detach().sum(), n_pairs)}
        advantages = batch["token_adv"] if "token_adv" in batch else batch["advantage"]
        params: dict[str, Any] = {}
        if cfg.policy_loss in ("ppo_clip", "cispo", "p3o"):
            params["clip_high"] = cfg.clip_high
        if cfg.policy_loss in ("ppo_clip", "p3o"):
            params["clip_low"] = cfg.clip_low
        if cfg.policy_loss == "ppo_clip":
            params["dual_clip"] = cfg.dual_clip
        agg_params = {"max_len": cfg.max_new_tokens} if cfg.aggregation == "seq_mean_token_sum_norm" else {}
        old_logp = batch["old_logp"] if "old_logp" in batch else logp.detach()
        pg, pg_metrics = policy_loss(cfg.policy_loss, logp, old_logp, advantages, target, aggregation=cfg.aggregation, **params, **agg_params)
        total = pg
        weight = self._trained_weight(batch)
        metrics: Metrics = {f"policy/{k}": (v.detach() * weight, weight) for k, v in pg_metrics.items()}
        if self.reference is not None:  # sequence-level k1 estimate of KL(pi || pi_ref) on the samples
            seqs = float(target.shape[0])
            metrics["kl"] = (((logp.detach() - batch["ref_logp"]) * target).sum(), seqs)
        if self.reference is not None and cfg.kl_in == "loss":
            kl_tokens = kl_penalty(cfg.kl_estimator, logp, batch["ref_logp"])
            kl_term = aggregate(kl_tokens, target, cfg.aggregation, **agg_params)
            total = total + cfg.beta * kl_term
            metrics["policy/kl_loss"] = (kl_term.detach() * weight, weight)
        if cfg.estimator == "ppo":
            vf, vf_metrics = value_loss(values, batch["old_values"], batch["returns"], target, clip=cfg.value_clip, aggregation=cfg.aggregation, **agg_params)
            total = total + cfg.vf_coef * vf
            metrics["critic/value_loss"] = (vf.detach() * weight, weight)
        return total * weight, metrics


def _job_ids(examples, n: int) -> list[int]:
    """Global ids of the ``n`` samples of each example (its index in the data set, whichever process has it)."""
    return [e["index"] * n + j for e in examples for j in range(n)]


def _null():
    import contextlib

    return contextlib.nullcontext()
