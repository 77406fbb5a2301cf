"""Stage 1 of online RL with ``rl.asynchronous.mode`` ``one_step_off`` or ``async`` (docs/scale.md).

Policy **version** ``v`` is the policy at the start of training step ``v`` (all of that step's optimizer updates
come after). At step ``s`` the trainer publishes version ``s`` to the producer (:class:`~alignkit.scale.RolloutProducer`),
takes the samples of step ``s`` (drawn earlier, or now when none were queued), and queues the next steps' prompts:

* ``one_step_off``: step ``s + 1``'s prompts are queued pinned to version ``s``, so while step ``s`` trains, the
  samples of step ``s + 1`` are drawn by the weights one update older than those that will train on them
  (staleness 1; step 0 samples with version 0, staleness 0).
* ``async``: steps ``s + 1 .. s + max(1, max_staleness)`` are queued; each job starts with the newest version the
  producer has then (and, with ``partial_tokens``, loads newer ones between segments).

A job whose oldest weights are more than ``max_staleness`` versions old when its step trains is dropped and drawn
again with the current weights (``async/dropped`` counts the samples). The next steps' prompts come from the
fit's data order (:class:`~alignkit.engine.loop.DataOrder`, a pure function of the seed and step); a queued job
whose prompts turn out not to be the step's (another fit, a resumed run) is discarded (``async/discarded``) and
the step samples synchronously. The samples' log-probs are the producer's (the behaviour policy μ); the trainer
recomputes π_old at the current weights, and ``rl.off_policy`` corrects by π_old/μ.

Several trainer processes: each rank holds its own producer for its share of each step's prompts (the data
order's ``share(step, rank)``); the job ids are the examples' global indices and the streams are keyed by
(seed, job id, step), so the ranks together draw the 1-process samples. With ``rl.env`` a job is a batch of
whole episodes (:func:`episode_runner`), every turn by the job's weights; μ's log-probs are 0.0 on the
environment's tokens, which ``completion_mask`` keeps out of the correction.
"""

from __future__ import annotations

import time

from ...engine.loop import DataOrder
from ...rollout import Sampling, build_rollout_engine
from ...scale import RolloutProducer


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of training step ``step`` (every process and mode uses the same one)."""
    return seed * 100003 + step * 101


class AsyncSampling:
    def __init__(self, algo):
        self.algo = algo
        self.cfg = algo.cfg.asynchronous
        self.producer: RolloutProducer | None = None
        self.local: int | None = None  # the fit-local step of the last rollout (for the data order)
        self.stats: dict[str, float] = {}

    # ---- the producer's engine: its own weights ------------------------------------------------------
    def build_producer(self, ctx) -> RolloutProducer:
        s, scale = self.algo.cfg.sampling, self.algo.recipe.scale
        if scale.backend == "ray":
            from ...scale import ray_rollout_engine

            engine = ray_rollout_engine(ctx.model, ctx.tokenizer, scale, backend=s.backend, vllm_options=s.vllm)
        else:
            from ...rollout.engine import resolve_backend

            backend = resolve_backend(s.backend, ctx.model)
            options = {} if backend == "vllm" else {"copy": True}
            engine = build_rollout_engine(backend, ctx.model, ctx.tokenizer, vllm_options=s.vllm, **options)
        return RolloutProducer(engine, self.cfg.partial_tokens if self.cfg.mode == "async" else None)

    # ---- one step ----------------------------------------------------------------------------------------
    def sample(self, ctx, examples, seed: int) -> list:
        if self.producer is None:
            self.producer = self.build_producer(ctx)
        producer, version = self.producer, ctx.step
        producer.publish(ctx.model, version)
        key = _key(version, examples)
        discarded = producer.discard(lambda k: k[0] > version or k == key)  # mispredicted or left-over jobs
        began = time.perf_counter()
        if not producer.pending(key):
            self._submit(ctx, version, examples, min_version=version)
        produced = producer.take(key)
        dropped = 0
        if version - produced.version > self.cfg.max_staleness:  # too old: draw again with the current weights
            dropped = len(produced.samples)
            self._submit(ctx, version, examples, min_version=version)
            produced = producer.take(key)
        waited = time.perf_counter() - began
        self._queue_next(ctx, examples)
        staleness = [version - s.version for s in produced.samples]
        self.stats = {"async/staleness_mean": sum(staleness) / max(1, len(staleness)), "async/staleness_max": float(max(staleness, default=0)),
                      "async/version_min": float(produced.version), "async/dropped": float(dropped), "async/resumed": float(produced.resumed),
                      "async/discarded": float(discarded), "async/wait": waited, "async/generate": produced.seconds}
        return produced.samples

    def _submit(self, ctx, step: int, examples, min_version: int = -1, pin: bool = False):
        s, g = self.algo.cfg.sampling, self.algo.cfg.sampling.group_size
        from .pipeline import _job_ids

        sampling = Sampling(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, seed=step_seed(ctx.seed, step))
        job_ids, batch_size = _job_ids(examples, g), s.batch_size or len(examples) * g
        run = None
        if self.algo.env_class is not None:  # rl.env: each sample is a whole episode, every turn by the job's weights
            run = episode_runner(self.algo, [e for e in examples for _ in range(g)], job_ids, batch_size)
        return self.producer.submit(_key(step, examples), [e["prompt"] for e in examples], g, job_ids, sampling, batch_size,
                                    min_version=min_version, pin=pin, run=run)

    def _queue_next(self, ctx, examples) -> None:
        """Queue the next steps' prompts (one_step_off: the next step, pinned to the current version)."""
        order = DataOrder(len(ctx.train_examples), ctx.batch_size, ctx.seed, self.algo.shuffle, ctx.strategy.world)
        local = self._local_step(order, ctx, examples)
        if local is None:
            return
        ahead = 1 if self.cfg.mode == "one_step_off" else max(1, self.cfg.max_staleness)
        for j in range(1, ahead + 1):
            upcoming = [ctx.train_examples[i] for i in order.share(local + j, ctx.strategy.rank)]
            if not self.producer.pending(_key(ctx.step + j, upcoming)):
                # one_step_off: exactly the current version's weights, whenever the producer's thread starts the job
                self._submit(ctx, ctx.step + j, upcoming, pin=self.cfg.mode == "one_step_off")

    def _local_step(self, order: DataOrder, ctx, examples) -> int | None:
        """The fit-local step whose prompts are ``examples`` (the data order's position), or None if unknown."""
        mine = [id(e) for e in examples]
        for local in dict.fromkeys([*(() if self.local is None else (self.local + 1,)), ctx.step, 0]):
            if [id(ctx.train_examples[i]) for i in order.share(local, ctx.strategy.rank)] == mine:
                self.local = local
                return local
        self.local = None
        return None

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()
            self.producer = None


def episode_runner(algo, rows: list, job_ids: list[int], batch_size: int):
    """``run(engine, sampling)`` for the producer: :func:`~alignkit.envs.run_episodes` of ``rows`` with the recipe's
    environment and limits (what the synchronous ``OnlineRL.episodes`` runs, on the producer's engine)."""
    from ...envs import Limits, run_episodes

    env, env_class = algo.cfg.env, algo.env_class
    limits = Limits(max_turns=env.max_turns, max_tokens=env.max_tokens, reward=env.reward, tools=env.tools, describe_tools=env.describe_tools,
                    truncated_reward=env.truncated_reward)
    options = dict(env.options)
    return lambda engine, sampling: run_episodes(engine, lambda: env_class(**options), rows, job_ids, sampling, limits, batch_size=batch_size)


def _key(step: int, examples) -> tuple:
    return (step, tuple(e["index"] for e in examples))
