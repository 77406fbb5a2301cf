"""Online RL on the shared engine as a pipeline of stages: GRPO, Dr. GRPO, DAPO, RLOO, ReMax, REINFORCE(++),
PPO, P3O, CoPG.

One training step (``train.batch_size`` prompts over all processes) is :meth:`OnlineRL.rollout`:

1. **Sample** (``rl.sampling``). Each process draws ``group_size`` completions for each of its prompts
   (a group never spans processes) with the live policy, or the frozen starting policy
   (``behavior: reference``). A sample's random stream is named by its example's global index, so
   1 process and N processes draw the same completions.
2. **Score.** The reward source (``rl.reward``: a task's gold reward, a reward model folder,
   ``module:function``, an ensemble, ...) scores every completion: a :class:`~.batch.Rollout`.
3. **Shape rewards.** ``rl.reward_transforms`` over the whole rollout, DAPO's overlong shaping and
   filters (``rl.dapo``), and for outcome estimators with ``rl.kl.in_reward`` each sample's reward minus
   ``beta`` times its summed KL to the reference. The kept samples become a :class:`~.batch.RolloutBatch`.
4. **Estimate advantages** (``rl.estimator``, :data:`~.estimators.ESTIMATORS`): from sequence rewards
   before the update is planned (outcome estimators), or from the rows' log-probs/values after they are
   computed (PPO's GAE, P3O's KL-shaped pairs, REINFORCE++'s token returns).
5. **Update** (``rl.update``, ``rl.policy``). Units (a group sharing its prompt's forward, a pair) are
   shuffled into ``mini_batches`` optimizer steps, repeated for ``epochs``; samples whose advantage is
   exactly 0 leave the forward/backward with their weight kept in the step's denominator.

Every rollout-wide statistic (reward transforms, batch std, moving baselines, whitening) goes through
``ctx.strategy`` (``gather``/``sum``), never a raw collective. Old log-probs are the trainer's kernel at
the sampling temperature (not the sampler's), so the first update's ratio is exactly 1.

Each stage's wall time is logged with the step (seconds; :data:`PHASES`): ``time/sample``, ``time/score``
(scoring and reward shaping), ``time/logprobs`` (old / reference log-probs and critic values, wherever a
stage asks for them), ``time/advantages`` (estimates and the update plan), ``time/collate`` (micro-batches
of the update); the engine adds ``time/update`` (forward, backward, optimizer) and ``time/step``. Every
``train.log_every`` steps the main process appends ``rl.log_samples`` of its samples to
``<run>/samples.jsonl`` (``docs/runs.md``).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any

import torch
from torch import nn

from ...engine.contract import Algorithm, Metrics
from ...engine.tracking import append_jsonl
from ...models.logprobs import TargetLogProbs, packed_target_logps
from ...models.reference import Reference
from ...objectives import kl_penalty
from ...rewards.transforms import apply_transform
from ...rollout import RolloutEngine, build_rollout_engine, generate
from .batch import Rollout, RolloutBatch, Row, annotate, collate_rows, sample_context
from .estimators import build_estimator, join_whitening

# the rollout's timed stages, as logged (seconds per step); the engine adds time/update and time/step
PHASES = ("time/sample", "time/score", "time/logprobs", "time/advantages", "time/collate")


class PhaseTimer:
    """Exclusive wall time per phase: time spent in a phase nested inside another (log-probs asked for while
    rewards are shaped) counts only for the inner one, so the phases add up to at most the step's time."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._stack: list[list] = []  # [phase, start, time in nested phases]

    @contextlib.contextmanager
    def __call__(self, phase: str):
        entry = [phase, time.perf_counter(), 0.0]
        self._stack.append(entry)
        try:
            yield
        finally:
            self._stack.pop()
            spent = time.perf_counter() - entry[1]
            self.seconds[phase] += spent - entry[2]
            if self._stack:
                self._stack[-1][2] += spent


class OnlineRL(Algorithm):
    name = "rl"
    data_kind = "prompt"
    example_unit = "prompts"
    key_metrics = ("reward", "kl", "completion_length", "finished")

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.rl
        self.name = self.cfg.estimator
        self.estimator = build_estimator(self.cfg)
        self.reference: Reference | None = None
        self.reward_source = None
        self.engines: dict[int, RolloutEngine] = {}  # id(sampling model) -> its held rollout engine
        # groups share their prompt's forward in the update (packed rows); PPO's critic reads padded rows;
        # trajectories (rl.env) carry environment tokens the packed layout would train
        self.share_prompts = self.cfg.update.share_prompts and not self.estimator.critic and self.cfg.env is None
        self.env_class = None
        if self.cfg.env is not None:  # the environment class and its options, checked before any model work
            from ...envs import check_options, environment_class

            self.env_class = environment_class(self.cfg.env.name)
            check_options(self.env_class, self.cfg.env.options)
        self.async_sampling = None  # rl.asynchronous: a background producer of the next steps' samples (docs/scale.md)
        if self.cfg.asynchronous.mode != "off":
            from .asynchronous import AsyncSampling

            self.async_sampling = AsyncSampling(self)

    # ----------------------------------------------------------------------------------------------
    # engine hooks
    # ----------------------------------------------------------------------------------------------
    def module(self, model):
        return self.estimator.module(model)

    def updates_per_step(self) -> int:
        return self.cfg.update.epochs * self.cfg.update.mini_batches

    def samples_per_example(self) -> int:
        return self.cfg.sampling.group_size

    def progress_info(self, loss: float, stats: dict[str, float]) -> str:
        times = " ".join(f"{k.removeprefix('time/')} {stats[k]:.2f}" for k in (*PHASES, "time/update") if k in stats)
        return f"loss {loss:.4f} reward {stats.get('reward', float('nan')):.3f} | s: {times}"

    def extra_modules(self) -> dict[str, nn.Module]:
        # PPO's critic as full weights under any strategy (ppo.CriticCheckpoint: a replica, shards, ZeRO partitions)
        critic = self.estimator.checkpoint_module() if hasattr(self.estimator, "checkpoint_module") else self.estimator.value_model
        return {"critic": critic} if critic is not None else {}

    def after_step(self, ctx, step: int) -> None:
        if hasattr(self.estimator, "after_step"):  # PPO: the critic's replica takes the step's updates
            self.estimator.after_step(self, ctx, step)

    def setup(self, ctx) -> None:
        from ...models.logprobs import supports_packing
        from ...rewards.sources import build_reward_source

        if self.share_prompts and not supports_packing(ctx.model):
            self.share_prompts = False  # e.g. flash-attention takes no custom 4-D mask
        scale = self.recipe.scale
        if scale.backend == "ray" and scale.trainer_processes != ctx.strategy.world:
            raise ValueError(f"scale.trainer_processes={scale.trainer_processes} but the trainer runs {ctx.strategy.world} process(es): launch it with "
                             f"torchrun --nproc-per-node {scale.trainer_processes} (docs/scale.md)")
        if self.env_class is None:
            spec = self.cfg.reward if self.cfg.reward != "gold" else f"gold:{self.recipe.task.name}"
            if scale.backend == "ray" and scale.reward_worker:  # scored in a Ray actor (docs/scale.md)
                from ...scale import ray_reward_source

                self.reward_source = ray_reward_source(spec, scale)
            else:
                self.reward_source = build_reward_source(spec)
            if getattr(self.reward_source, "token_level", False) and (self.cfg.reward_transforms or self.cfg.dapo.overlong == "shape"):
                raise ValueError(f"rl.reward {spec}: a token-level reward source gives per-token rewards; rl.reward_transforms and "
                                 "rl.dapo.overlong=shape act on sequence rewards and are not applied to them")
        self.estimator.setup(self, ctx)
        first_turn_kl = self.cfg.env is not None and self.cfg.env.first_turn_kl > 0
        if self.cfg.kl.beta > 0 or first_turn_kl or self.cfg.ppo.dense_reward_model or self.cfg.sampling.behavior == "reference":
            self.reference = ctx.reference(keep=True, temperature=self.cfg.sampling.temperature)

    @torch.no_grad()
    def evaluate(self, ctx, examples) -> dict[str, float]:
        """Mean reward (and, on a built-in task, gold reward) of samples on held-out prompts."""
        if not examples:
            return {}
        n = self.cfg.sampling.eval_samples
        if self.env_class is not None:  # episodes: the mean trajectory reward and the environment's metrics
            from ...envs import episode_stats

            rows = [e for e in examples for _ in range(n)]
            trajectories = self.episodes(ctx.model, ctx.tokenizer, rows, 12345, _job_ids(examples, n))
            return {"reward": statistics.fmean(t.reward for t in trajectories), **episode_stats(trajectories)}
        samples = self.generate(ctx.model, ctx.tokenizer, [e["prompt"] for e in examples], n, seed=12345, job_ids=_job_ids(examples, n))
        context = sample_context(examples, n)
        prompts, completions = [s.prompt for s in samples], [s.completion for s in samples]
        rewards = self.reward_source.score(prompts, completions, **context)
        out = {"reward": rewards.float().mean().item(), "completion_length": statistics.fmean(len(s.completion_ids) for s in samples)}
        if self.recipe.data.eval is None:
            from ...tasks import get_task

            out["gold_reward"] = statistics.fmean(get_task(self.recipe.task).gold_rewards(prompts, completions))
        return out

    def unit_key(self, example):
        return example.unit if isinstance(example, Row) else None

    def example_tokens(self, example) -> int:
        return example.length if isinstance(example, Row) else super().example_tokens(example)

    def unit_rows(self, unit):
        if self.share_prompts and unit[0].unit is not None:  # one packed row: the prompt once, then every completion
            return [unit[0].prompt_len + sum(r.completion_tokens for r in unit)]
        return super().unit_rows(unit)

    def collate(self, examples: list[Row], pad_id):
        return collate_rows(examples, self.share_prompts)

    def weight(self, batch) -> float:
        """What the update's mean divides by: this micro-batch's tokens (or sequences, pairs) plus those
        of the zero-advantage samples it stands for (see :meth:`skip_zero_advantage`)."""
        return self.estimator.weight(batch) + batch.get("skipped_weight", 0.0)

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        return self.estimator.loss(self, policy, batch)

    def policy_logps(self, policy, batch) -> torch.Tensor:
        """Target log-probs [N, T] in the per-sequence layout; from prompt-sharing packed rows when present."""
        if "packed_input_ids" not in batch:
            return policy(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        values = packed_target_logps(policy, batch["packed_input_ids"], batch["packed_segment"], batch["packed_group"], batch["packed_loss_mask"],
                                     batch["packed_position_ids"], batch["packed_source_index"])
        out = torch.zeros(batch["input_ids"].shape, dtype=values.dtype, device=values.device)
        return out.index_put((batch["packed_target_seq"], batch["packed_target_pos"]), values)

    # ----------------------------------------------------------------------------------------------
    # the rollout: sample -> score -> shape rewards -> advantages -> update
    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, ctx, examples: list[dict[str, Any]]) -> tuple[list[list[dict]], dict[str, float]]:
        # the same seed on every process: a sample's stream is named by its example's global index (job ids)
        seed = ctx.seed * 100003 + ctx.step * 101
        timer = self._timer = PhaseTimer()
        with timer("time/sample"):
            samples = self.sample(ctx, examples, seed)
        with timer("time/score"):
            rollout = self.score(ctx, examples, samples)
            if self.async_sampling is not None:
                rollout.stats.update(self.async_sampling.stats)
            batch = self.shape_rewards(ctx, rollout)
        with timer("time/advantages"):
            rollout.advantage = self.estimator.sequence_advantages(self, ctx, rollout)
            if rollout.advantage is not None:
                batch.advantage = rollout.advantage[batch.sample].float()
        rollout.stats["kept"] = len(batch) / max(1, len(rollout.samples))
        self.log_samples(ctx, rollout)
        if not len(batch):
            if self.estimator.whitens():
                join_whitening(ctx)  # the other processes' whitening sums over every process
            return [], {**rollout.stats, **timer.seconds}
        with timer("time/advantages"):
            steps, skipped_weights = self.plan(batch, seed, rollout.stats)
            self.annotate(ctx, [row for step in steps for unit in step for row in unit], self.estimator.annotations(self))
            self.estimator.token_advantages(self, ctx, rollout, batch)
        with timer("time/collate"):
            updates = self.updates(ctx, steps, skipped_weights)
        return updates, {**rollout.stats, **timer.seconds}

    def log_samples(self, ctx, rollout: Rollout) -> None:
        """Every ``train.log_every`` steps, the first ``rl.log_samples`` samples of the main process's share
        (whole groups first) appended to ``<run>/samples.jsonl``: step (1-based, as in metrics.jsonl), prompt,
        completion, reward (the reward source's score, as averaged into the logged ``reward``), the shaped
        reward the advantages read, the sequence advantage (outcome estimators; null for token-level ones),
        finished and completion tokens."""
        k, step = self.cfg.log_samples, ctx.step + 1
        if not k or not ctx.strategy.is_main or step % self.recipe.train.log_every:
            return
        advantage = rollout.advantage.tolist() if rollout.advantage is not None else None
        rows = [{"step": step, "prompt": s.prompt, "completion": s.completion, "reward": float(rollout.raw_reward[i]),
                 "shaped_reward": float(rollout.reward[i]), "advantage": advantage[i] if advantage is not None else None,
                 "finished": bool(s.finished), "tokens": len(s.completion_ids), **({"version": s.version} if getattr(s, "version", None) is not None else {})}
                for i, s in enumerate(rollout.samples[:k])]
        out = self.recipe.output_dir
        out.mkdir(parents=True, exist_ok=True)
        append_jsonl(out / "samples.jsonl", rows)

    def engine_for(self, model, tokenizer) -> RolloutEngine:
        """The rollout engine sampling from ``model``, built on first use and held for the whole run
        (a vLLM engine is started once and synced when the weights change); closed by :meth:`close`."""
        if id(model) not in self.engines:
            s = self.cfg.sampling
            if self.recipe.scale.backend == "ray" and self.async_sampling is None:  # Ray rollout workers (asynchronous: the producer's)
                from ...scale import ray_rollout_engine

                self.engines[id(model)] = ray_rollout_engine(model, tokenizer, self.recipe.scale, backend=s.backend, vllm_options=s.vllm)
            else:
                self.engines[id(model)] = build_rollout_engine(s.backend, model, tokenizer, vllm_options=s.vllm, **self.engine_options(model))
        return self.engines[id(model)]

    def engine_options(self, model) -> dict:
        """``rl.sampling.precision=bf16``: the alignkit decoder samples from a bf16 copy of ``model``."""
        if self.cfg.sampling.precision == "model":
            return {}
        from ...rollout.engine import resolve_backend

        if (backend := resolve_backend(self.cfg.sampling.backend, model)) != "alignkit":
            raise ValueError(f"rl.sampling.precision=bf16 is a setting of the alignkit decoder; rl.sampling.backend resolves to {backend!r}: "
                             "set rl.sampling.backend=alignkit or rl.sampling.precision=model")
        return {"dtype": torch.bfloat16}

    def generate(self, model, tokenizer, prompts, n: int, **kwargs):
        """Samples with the recipe's sampling settings from the held engine of ``model``."""
        s = self.cfg.sampling
        kwargs.setdefault("batch_size", s.batch_size or len(prompts) * n)
        return generate(model, tokenizer, prompts, n=n, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                        engine=self.engine_for(model, tokenizer), **kwargs)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines = {}
        if self.async_sampling is not None:
            self.async_sampling.close()
        if hasattr(self.reward_source, "close"):  # a Ray reward worker
            self.reward_source.close()

    def episodes(self, model, tokenizer, rows, seed: int, job_ids: list[int]) -> list:
        """Multi-turn trajectories (:func:`alignkit.envs.run_episodes`), one per row, sampled by the held
        engine of ``model`` with the recipe's sampling settings (``max_new_tokens`` bounds one turn)."""
        from ...envs import Limits, run_episodes
        from ...rollout import Sampling

        s, env = self.cfg.sampling, self.cfg.env
        engine = self.engine_for(model, tokenizer)
        engine.update_from(model)
        limits = Limits(max_turns=env.max_turns, max_tokens=env.max_tokens, reward=env.reward, tools=env.tools, describe_tools=env.describe_tools,
                        truncated_reward=env.truncated_reward)
        sampling = Sampling(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, seed=seed)
        options = dict(env.options)
        return run_episodes(engine, lambda: self.env_class(**options), rows, job_ids, sampling, limits, batch_size=s.batch_size or max(1, len(rows)))

    def sample(self, ctx, examples, seed: int) -> list:
        """Stage 1: ``group_size`` completions per prompt, consecutive (with ``rl.env``: whole trajectories)."""
        g = self.cfg.sampling.group_size
        if self.async_sampling is not None:  # drawn by earlier weights in the background (rl.asynchronous; episodes too)
            return self.async_sampling.sample(ctx, examples, seed)
        if self.env_class is not None:
            return self.episodes(ctx.model, ctx.tokenizer, [e for e in examples for _ in range(g)], seed, _job_ids(examples, g))
        sampler, context = ctx.model, contextlib.nullcontext
        if self.cfg.sampling.behavior == "reference":  # off-policy rollouts from the frozen starting policy
            sampler, context = self.reference.model, self.reference.context
        with context():
            return self.generate(sampler, ctx.tokenizer, [e["prompt"] for e in examples], g, seed=seed, job_ids=_job_ids(examples, g))

    def score(self, ctx, examples, samples) -> Rollout:
        """Stage 2: the reward source's score of every sample (this process's share of the rollout)."""
        n, rank = len(samples), ctx.strategy.rank
        rollout = Rollout(examples, samples, self.cfg.sampling.group_size, reward=torch.empty(0), raw_reward=torch.empty(0),
                          finished=torch.tensor([s.finished for s in samples]), keep=torch.ones(n, dtype=torch.bool), own=slice(rank * n, (rank + 1) * n))
        if self.env_class is not None:  # trajectories carry the environment's rewards
            from ...envs import episode_stats

            rewards = torch.tensor([t.reward for t in samples], dtype=torch.float32)
            rollout.stats.update(episode_stats(samples))
        elif getattr(self.reward_source, "token_level", False):  # per-token rewards (Text2Grad); the sequence reward is their sum
            rollout.token_rewards = self.token_rewards(ctx, samples, rollout.context())
            rewards = torch.stack([t.sum() for t in rollout.token_rewards]).float() if samples else torch.zeros(0)
        else:
            rewards = self.reward_source.score([s.prompt for s in samples], [s.completion for s in samples], **rollout.context()).float().cpu()
        rollout.reward, rollout.raw_reward = rewards, rewards.clone()
        rollout.stats.update({
            "reward": rewards.mean().item(),
            "reward_std": rewards.std().item() if n > 1 else 0.0,
            "completion_length": statistics.fmean(len(s.completion_ids) for s in samples),
            "finished": rollout.finished.float().mean().item(),
        })
        return rollout

    def token_rewards(self, ctx, samples, context) -> list[torch.Tensor]:
        """A token-level reward source's rewards on each sample's completion tokens (the policy's tokenisation,
        by character offsets of the decoded completion)."""
        from ...rewards.spans import text_offsets

        offsets = [text_offsets(ctx.tokenizer, s.completion_ids) for s in samples]
        out = self.reward_source.score_tokens([s.prompt for s in samples], [s.completion for s in samples], offsets=offsets, **context)
        for s, t in zip(samples, out, strict=True):
            if t.numel() != len(s.completion_ids):
                raise ValueError(f"reward source {self.reward_source.name}: {t.numel()} token rewards for a completion of {len(s.completion_ids)} tokens")
        return [t.float().cpu() for t in out]

    def shapes_outcome_rewards(self) -> bool:
        """KL in the reward (``rl.kl.in_reward``, ``beta > 0``) for an outcome estimator (GRPO, RLOO, ...)."""
        return self.cfg.kl.beta > 0 and self.cfg.kl.in_reward and self.estimator.outcome

    def shape_rewards(self, ctx, rollout: Rollout) -> RolloutBatch:
        """Stage 3: reward transforms, DAPO's shaping and filters, the KL in outcome rewards; the kept rows."""
        cfg, dapo, g = self.cfg, self.cfg.dapo, rollout.group_size
        if cfg.reward_transforms:  # e.g. PPO-max's clipping and normalisation, over every process's rewards
            everyone = ctx.strategy.gather(rollout.reward)
            for transform in cfg.reward_transforms:
                everyone = apply_transform(transform["name"], everyone, **{k: v for k, v in transform.items() if k != "name"}).float()
            rollout.reward = everyone[rollout.own]
        if dapo.overlong == "shape":  # DAPO's soft overlong punishment over the last `overlong_buffer` tokens
            lengths = torch.tensor([len(s.completion_ids) for s in rollout.samples], dtype=torch.float32)
            start = cfg.sampling.max_new_tokens - dapo.overlong_buffer
            rollout.reward = rollout.reward - torch.clamp((lengths - start) / max(dapo.overlong_buffer, 1), 0, 1) * dapo.overlong_penalty
        keep = rollout.keep
        if dapo.dynamic_sampling:  # drop groups whose rewards are all equal
            grouped = rollout.reward.view(-1, g)
            varied = (grouped.max(1).values - grouped.min(1).values) > 0
            keep = varied.repeat_interleave(g)
            rollout.stats["groups_kept"] = varied.float().mean().item()
        if dapo.overlong == "filter":
            keep = keep & rollout.finished
        tokens = torch.tensor([len(s.completion_ids) > 0 for s in rollout.samples])
        if self.estimator.pairs:  # a pair is kept or dropped whole (also when one of it has no token)
            keep = (keep & tokens).view(-1, 2).all(1).repeat_interleave(2)
        rollout.keep = keep
        shaped = self.shapes_outcome_rewards()
        rows = [i for i in range(len(rollout.samples)) if tokens[i] and (keep[i] or shaped)]
        unit_size = g if self.share_prompts else 2 if self.estimator.pairs else None  # a group or pair stays in one micro-batch
        batch = RolloutBatch.from_samples(rollout, rows, unit_size, ctx.tokenizer.pad_token_id, behaviour=cfg.off_policy.correction != "none")
        if shaped:
            # r_i - beta * sum_t KL_t(pi_old || pi_ref) on the sample's tokens (verl's use_kl_in_reward), before the
            # group statistics; samples with no token keep r_i. REINFORCE++ puts the KL on each token instead.
            kl = torch.zeros_like(rollout.reward)
            if len(batch):
                self.annotate(ctx, batch.rows(), ["old_logp", "ref_logp"])
                per_token = kl_penalty(cfg.kl.estimator, batch.old_logp, batch.ref_logp)
                kl[batch.sample] = torch.where(batch.completion_mask.bool(), per_token, torch.zeros_like(per_token)).sum(-1)
            rollout.stats["kl_penalty"] = (cfg.kl.beta * kl).mean().item()
            if not self.estimator.token_returns():
                rollout.reward = rollout.reward - cfg.kl.beta * kl
            batch = batch.subset(keep[batch.sample])
            batch.reward = rollout.reward[batch.sample].float()
        return batch

    def annotate(self, ctx, rows: list[Row], names: list[str]) -> None:
        """Per-token log-probs / values the later stages read, on ``rows`` (in that order), unless known."""
        if not rows:
            return
        timer = getattr(self, "_timer", None)
        with timer("time/logprobs") if timer is not None else contextlib.nullcontext():
            self._annotate(ctx, rows, names)

    def _annotate(self, ctx, rows: list[Row], names: list[str]) -> None:
        batch, size = rows[0].batch, ctx.micro_batch_size or 64
        for name in names:
            if getattr(batch, name) is not None:  # e.g. from the KL in the reward
                continue
            if name == "old_logp":
                module = TargetLogProbs(ctx.model, self.cfg.sampling.temperature)
            elif name == "ref_logp":
                module = self.reference
            else:
                module = self.estimator.annotators()[name]
            annotate(ctx, rows, name, module, size)

    def skips_zero_advantage(self) -> bool:
        """Whether a sample with advantage exactly 0 contributes exactly nothing to the update: true for the
        outcome estimators when no KL term sits in the loss (every policy loss is then ``A * f(ratio)``)."""
        kl_loss = self.cfg.kl.beta > 0 and not self.cfg.kl.in_reward
        est = self.estimator
        return self.cfg.update.skip_zero_advantage and est.outcome and not est.token_returns() and not kl_loss

    def plan(self, batch: RolloutBatch, seed: int, stats: dict[str, float]) -> tuple[list[list[list[Row]]], list[float]]:
        """Stage 5: the rows of each optimizer step of one pass, as units (pairs / groups stay whole) shuffled
        into ``mini_batches`` steps, without their zero-advantage samples; and the weight those carry."""
        units: list[list[Row]] = []
        for row in batch.rows():
            if units and row.unit is not None and units[-1][-1].unit == row.unit:
                units[-1].append(row)
            else:
                units.append([row])
        order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed)).tolist()
        per = math.ceil(len(units) / self.cfg.update.mini_batches)
        steps, skipped_weights, skipped = [], [], 0
        for start in range(0, len(units), per):
            step, weight, n = self.skip_zero_advantage(batch, [units[u] for u in order[start : start + per]])
            steps.append(step)
            skipped_weights.append(weight)
            skipped += n
        if self.skips_zero_advantage():
            stats["zero_advantage_skipped"] = skipped / len(batch)
        return steps, skipped_weights

    def skip_zero_advantage(self, batch: RolloutBatch, step: list[list[Row]]) -> tuple[list[list[Row]], float, int]:
        """The units of one optimizer step without their zero-advantage samples, the weight those samples
        carry (kept in the update's denominator, so the mean is the one over every sample) and how many
        were left out. Their loss terms and gradients are exactly 0 (``-A * ratio`` with ``A = 0`` for any
        ratio), so leaving their forward and backward out changes nothing but the work done. A step whose
        samples all have zero advantage keeps its smallest unit, so the optimizer still steps (AdamW moves
        the weights on momentum and decay even with a zero gradient, as an unskipped run would)."""
        if not self.skips_zero_advantage():
            return step, 0.0, 0
        zero = (batch.advantage == 0).tolist()
        trained = [[r for r in unit if not zero[r.index]] for unit in step]
        if not any(trained):
            smallest = min(range(len(step)), key=lambda u: sum(r.length for r in step[u]))
            trained[smallest] = step[smallest]
        kept = {id(r) for unit in trained for r in unit}
        left_out = [r for unit in step for r in unit if id(r) not in kept]
        return [u for u in trained if u], sum(self.estimator.row_weight(r.trained_tokens) for r in left_out), len(left_out)

    def updates(self, ctx, steps: list[list[list[Row]]], skipped_weights: list[float]) -> list[list[dict]]:
        """Stage 5: ``epochs`` passes over the planned steps, each split into the engine's micro-batches."""
        updates = []
        for _ in range(self.cfg.update.epochs):
            for step, weight in zip(steps, skipped_weights):
                rows = [r for unit in step for r in unit]
                batches = ctx.micro_batches(rows, list(range(len(rows))))
                batches[0]["skipped_weight"] = weight
                updates.append(batches)
        return updates


def _job_ids(examples, n: int) -> list[int]:
    """Global ids of the ``n`` samples of each example (its index in the data set, whichever process has it)."""
    return [e["index"] * n + j for e in examples for j in range(n)]
