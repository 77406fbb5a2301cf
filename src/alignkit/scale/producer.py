"""Asynchronous rollouts: a background producer that samples the next steps' prompts with the weights of an
earlier step while the trainer updates (``rl.asynchronous``; docs/scale.md).

The producer owns a rollout engine that holds its own weights (a private copy of the policy, a vLLM engine, or
Ray rollout workers) and one background thread. The trainer:

1. :meth:`RolloutProducer.publish` the policy's weights at the start of each step as **version** ``v`` (the step
   index; a snapshot of named tensors, so the optimizer's in-place updates do not leak into it);
2. :meth:`RolloutProducer.submit` a job (a step's prompts, job ids and seed): the producer's thread runs jobs in
   order and, before each one, loads the newest published weights, so a job records the version that drew it;
3. :meth:`RolloutProducer.take` the job of the step it trains (waiting for it when it is not done).

With ``partial_tokens`` a job decodes in segments of that many tokens; between segments the thread loads newer
published weights (if any) and continues the unfinished samples from their prefix (prompt + tokens so far), so a
long sample is not thrown away because the weights moved (partial rollouts). Each token's log-prob is the one of
the weights that drew it, which is what the importance corrections need; ``Sample.version`` is the version of the
first token (the oldest weights in the sample) and ``Sample.resumed`` counts the segments drawn by newer weights.
Continuing re-reads the prefix (prefill under the new weights); the old weights' KV cache is not kept. This works
with any engine that takes ``prompt_ids`` (alignkit's decoder, ``hf``, vLLM and Ray workers around them); the
random stream of a continued segment is keyed by a segment-specific seed, so a partial rollout is not the
uninterrupted sample under either weights.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..rollout.engine import RolloutEngine, Sample, Sampling

# distinct random streams for continued segments: seed + segment * this
SEGMENT_SEED_STRIDE = 7919


@dataclass
class Job:
    """One step's generation: ``prompts`` (as the data gives them), ``n`` samples each, one stream id per sample."""

    key: Any
    prompts: list[Any]
    n: int
    job_ids: list[int]
    sampling: Sampling
    batch_size: int
    min_version: int = -1  # wait for weights at least this new before starting (a regeneration after a drop)
    weights: tuple[int, list] | None = None  # pinned: exactly these (version, named tensors), whatever is published later
    run: Callable[[RolloutEngine, Sampling], list] | None = None  # instead of generate: e.g. multi-turn episodes (rl.env)
    future: Future = field(default_factory=Future)


@dataclass
class Produced:
    samples: list[Sample]
    version: int  # the oldest weights version in the job (all its samples start together)
    resumed: int  # samples continued under newer weights
    seconds: float


class RolloutProducer:
    """Runs generation jobs on ``engine`` in a background thread with the newest published weights.

    ``engine`` must hold its own weights (``shares_model`` False): the trainer updates its model while the
    producer samples. ``partial_tokens``: see the module docstring."""

    def __init__(self, engine: RolloutEngine, partial_tokens: int | None = None):
        if engine.shares_model:
            raise ValueError("an asynchronous producer needs an engine with its own weights (copy=True, vllm or ray), not one sharing the trained model")
        self.engine = engine
        self.partial_tokens = partial_tokens
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignkit-rollouts")
        self._lock = threading.Condition()
        self._published: tuple[int, list[tuple[str, torch.Tensor]]] | None = None
        self.loaded_version = -1  # the weights the engine holds now (producer thread only)
        self.jobs: dict[Any, Job] = {}
        self.closed = False

    # ---- trainer side --------------------------------------------------------------------------------
    def publish(self, model: torch.nn.Module, version: int) -> None:
        """Make ``model``'s current weights version ``version`` (copied now; the engine loads them before its next job or segment)."""
        from ..models.weights import unwrap_ddp

        snapshot = [(name, tensor.detach().clone()) for name, tensor in unwrap_ddp(model).state_dict().items()]
        with self._lock:
            self._published = (int(version), snapshot)
            self._lock.notify_all()

    @property
    def published_version(self) -> int:
        with self._lock:
            return self._published[0] if self._published is not None else -1

    def submit(self, key, prompts: Sequence[Any], n: int, job_ids: Sequence[int], sampling: Sampling, batch_size: int, min_version: int = -1,
               pin: bool = False, run: Callable[[RolloutEngine, Sampling], list] | None = None) -> Job:
        """Queue a job (run after the jobs already queued); ``key`` names it for :meth:`take`. ``min_version``: start
        with weights at least this new; ``pin``: with exactly the weights published now (one-step-off). ``run``: how
        the job samples, ``run(engine, sampling) -> samples`` (e.g. :func:`~alignkit.envs.run_episodes` for whole
        trajectories, each recording the version like a sample; no partial rollouts), instead of ``engine.generate``."""
        if self.closed:
            raise RuntimeError("the rollout producer is closed")
        with self._lock:
            weights = self._published if pin else None
        if pin and weights is None:
            raise ValueError("submit(pin=True) before any weights were published")
        job = Job(key, list(prompts), n, [int(j) for j in job_ids], sampling, batch_size, min_version, weights, run)
        self.jobs[key] = job
        self._pool.submit(self._run, job)
        return job

    def pending(self, key) -> bool:
        return key in self.jobs

    def take(self, key) -> Produced:
        """The result of job ``key`` (waits for it); a worker's exception is raised here, in the trainer."""
        job = self.jobs.pop(key)
        return job.future.result()

    def discard(self, keep=lambda key: False) -> int:
        """Forget queued jobs whose key ``keep`` rejects (their results are never read); returns how many."""
        gone = [k for k in self.jobs if not keep(k)]
        for k in gone:
            self.jobs.pop(k).future.cancel()
        return len(gone)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for job in self.jobs.values():
            job.future.cancel()
        self.jobs = {}
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.engine.close()

    # ---- producer thread -------------------------------------------------------------------------------
    def _load_newest(self, at_least: int = -1, pinned: tuple[int, list] | None = None) -> bool:
        """Load the newest published weights (or ``pinned`` ones) into the engine unless it holds them; True if loaded."""
        with self._lock:
            while pinned is None and (self._published is None or self._published[0] < at_least):
                self._lock.wait(timeout=1.0)
                if self.closed:
                    raise RuntimeError("the rollout producer was closed")
            version, snapshot = pinned if pinned is not None else self._published
        if version == self.loaded_version:
            return False
        self.engine.update_weights(snapshot)
        self.loaded_version = version
        return True

    def _run(self, job: Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(self._produce(job))
        except BaseException as error:  # surfaced in the trainer by take()
            job.future.set_exception(error)

    def _produce(self, job: Job) -> Produced:
        import time

        began = time.perf_counter()
        self._load_newest(job.min_version, job.weights)
        version = self.loaded_version
        if job.run is not None:  # e.g. episodes: every turn by the weights loaded now
            samples = job.run(self.engine, job.sampling)
            for s in samples:
                s.version = version
            return Produced(samples, version, 0, time.perf_counter() - began)
        first = job.sampling if self.partial_tokens is None else job.sampling.with_(max_new_tokens=min(self.partial_tokens, job.sampling.max_new_tokens))
        samples = self.engine.generate(job.prompts, n=job.n, job_ids=job.job_ids, sampling=first, batch_size=job.batch_size)
        for i, s in enumerate(samples):
            s.prompt, s.version = job.prompts[i // job.n], version
        resumed = 0
        budget, segment = job.sampling.max_new_tokens, 0
        while self.partial_tokens is not None:
            open_rows = [i for i, s in enumerate(samples) if not s.finished and len(s.completion_ids) < budget]
            if not open_rows:
                break
            segment += 1
            newer = self._load_newest()
            done = len(samples[open_rows[0]].completion_ids)  # every open row has drawn the same number of tokens
            step = job.sampling.with_(max_new_tokens=min(self.partial_tokens, budget - done), seed=_segment_seed(job.sampling.seed, segment))
            more = self.engine.generate(prompt_ids=[samples[i].prompt_ids + samples[i].completion_ids for i in open_rows], n=1,
                                        job_ids=[job.job_ids[i] for i in open_rows], sampling=step, batch_size=job.batch_size)
            for i, extra in zip(open_rows, more):
                s = samples[i]
                s.completion_ids = s.completion_ids + extra.completion_ids
                s.logprobs = None if s.logprobs is None or extra.logprobs is None else s.logprobs + extra.logprobs
                s.finished = extra.finished
                s.completion = self.engine.tokenizer.decode(s.completion_ids, skip_special_tokens=True)
                if newer:
                    s.resumed += 1
            resumed += len(open_rows) if newer else 0
        return Produced(samples, version, resumed, time.perf_counter() - began)


def _segment_seed(seed: int | None, segment: int) -> int | None:
    return None if seed is None else seed + segment * SEGMENT_SEED_STRIDE
