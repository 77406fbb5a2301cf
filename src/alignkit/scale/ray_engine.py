"""``scale.backend: ray``: rollout workers and a reward worker as Ray actors, driven by the training process
(docs/scale.md). Ray is imported only when one of these is built.

* :class:`RayRolloutEngine` is a :class:`~alignkit.rollout.RolloutEngine` (the driver calls ``generate``,
  ``update_weights``, ``update_from`` as on any engine). Each call's jobs are split between the workers in whole
  groups (a prompt's ``n`` samples stay on one worker, sharing its prompt's prefill); each job keeps its stream id,
  so with alignkit's decoder the samples are the single-process ones. The policy is shipped to the workers once;
  after an update ``update_from(model)`` puts the named tensors in the object store once and every worker loads
  them (``update_weights``).
* :class:`RayRewardSource` scores in a reward worker (a reward model, ``module:function`` code, a task's gold
  reward); ``score`` is the reward-source interface.
* **Placement** (``scale.placement``): ``colocated`` pins the workers to the driver's node, sharing its devices
  (they reserve ``worker_cpus`` / ``worker_gpus``, fractions allowed, and take turns with the trainer in
  synchronous mode); ``disaggregated`` reserves a placement group with one bundle per worker
  (``placement_strategy``: PACK, SPREAD, ...) so that rollouts run on their own devices or nodes.
* **Failures** surface in the driver as :class:`WorkerError`, with the worker's name, host, pid and its traceback.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Iterable, Sequence

import torch

from ..rollout.engine import Job, RolloutEngine, Sample, Sampling


class WorkerError(RuntimeError):
    """A Ray worker failed; the message carries the worker's traceback."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("scale.backend=ray needs Ray: pip install 'alignkit[ray]' (or pip install 'ray>=2.40')") from None
    return ray


def connect(scale) -> Any:
    """Join ``scale.address`` (or start a local cluster of ``scale.num_cpus`` CPUs) unless Ray is already
    initialised in this process; returns the ``ray`` module."""
    ray = import_ray()
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if scale.address is None and scale.num_cpus is not None:
            options["num_cpus"] = scale.num_cpus
        ray.init(address=scale.address, **options)
    return ray


def call(ray, refs, what: str):
    """``ray.get(refs)`` with a worker's failure raised as :class:`WorkerError` naming ``what`` (and its traceback)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # Ray colours the worker's name
        raise WorkerError(f"{what} failed in its Ray worker; the worker's traceback:\n{text}") from None
    except ray.exceptions.RayActorError as error:
        raise WorkerError(f"{what}: the Ray worker died ({error})") from None
    except ray.exceptions.GetTimeoutError:
        raise WorkerError(f"{what}: no answer within the timeout") from None


def _schedule(ray, scale, cpus: float, gpus: float, bundle: int | None, group) -> dict[str, Any]:
    """Actor options: resources plus the scheduling strategy of ``scale.placement``."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    if group is not None and bundle is not None:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=bundle)
    else:  # colocated: on the driver's node
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return options


def placement_group(ray, scale):
    """The placement group of the disaggregated layout (one bundle per rollout worker), once it is ready."""
    from ray.util.placement_group import placement_group as make_group

    bundle = {"CPU": scale.worker_cpus, **({"GPU": scale.worker_gpus} if scale.worker_gpus else {})}
    group = make_group([dict(bundle) for _ in range(scale.rollout_workers)], strategy=scale.placement_strategy)
    ready, _ = ray.wait([group.ready()], timeout=scale.timeout_s)
    if not ready:
        ray.util.remove_placement_group(group)
        raise WorkerError(f"scale.placement=disaggregated: {scale.rollout_workers} bundles of {bundle} ({scale.placement_strategy}) could not be placed within "
                          f"{scale.timeout_s:.0f} s; the cluster has {ray.cluster_resources()} (lower scale.worker_cpus / worker_gpus or add nodes)")
    return group


class RayRolloutEngine(RolloutEngine):
    """Rollouts on ``scale.rollout_workers`` Ray actors, each a :class:`~alignkit.scale.workers.RolloutWorker`
    with a ``backend`` engine over its own copy of ``model`` (see the module docstring)."""

    name = "ray"
    shares_model = False
    batch_whole_call = True

    def __init__(self, model, tokenizer, scale, backend: str = "alignkit", vllm_options=None):
        from ..models.weights import unwrap_ddp, weights_version
        from .workers import RolloutWorker

        super().__init__(model, tokenizer)
        self.model = None  # the workers hold the weights; this process keeps none
        self.scale = scale
        ray = self.ray = connect(scale)
        self.group = placement_group(ray, scale) if scale.placement == "disaggregated" else None
        shipped = copy.deepcopy(unwrap_ddp(model)).cpu()
        model_ref, tokenizer_ref = ray.put(shipped), ray.put(tokenizer)
        remote = ray.remote(RolloutWorker)
        self.workers = [remote.options(**_schedule(ray, scale, scale.worker_cpus, scale.worker_gpus, i if self.group is not None else None, self.group),
                                       name=None).remote(i, model_ref, tokenizer_ref, backend, vllm_options, scale.worker_cpus)
                        for i in range(scale.rollout_workers)]
        self.where = call(ray, [w.where.remote() for w in self.workers], "starting the rollout workers")
        from ..core.progress import say

        driver = ray.get_runtime_context().get_node_id()
        say("rollout workers (scale.placement=" + scale.placement + "): " + "; ".join(
            f"{w['rank']} on node {w['node'][:12]}{' (driver node)' if w['node'] == driver else ''} {w['host']} pid {w['pid']} {w['engine']} {w['device']}"
            for w in self.where))
        self._synced = (id(model), weights_version(model))
        self.version = 0

    def _generate_batch(self, jobs: list[Job], job_ids: list[int], n: int, sampling: Sampling, **kwargs) -> list[Sample]:
        groups = len(jobs) // n
        per = -(-groups // len(self.workers))  # whole groups per worker
        refs, spans = [], []
        for w, worker in enumerate(self.workers):
            lo, hi = min(groups, w * per) * n, min(groups, (w + 1) * per) * n
            if lo == hi:
                continue
            refs.append(worker.generate.remote([ids for _, ids in jobs[lo:hi]], job_ids[lo:hi], sampling, hi - lo))
            spans.append((w, lo, hi))
        results = []
        for (w, lo, hi), ref in zip(spans, refs):
            results.append(call(self.ray, ref, f"rollout worker {w} ({self.where[w]['host']} pid {self.where[w]['pid']}) generating jobs {lo}..{hi - 1}"))
        samples = [s for part in results for s in part]
        for (prompt, _), s in zip(jobs, samples):
            s.prompt = prompt
        return samples

    def _inference_mode(self):
        import contextlib

        return contextlib.nullcontext()

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """Put ``(name, tensor)`` pairs in the object store once; every worker loads them into its model."""
        named = {name: tensor.detach().cpu() for name, tensor in named_tensors}
        self.version = self.version + 1 if version is None else version
        ref = self.ray.put(named)
        call(self.ray, [w.update_weights.remote(ref, self.version) for w in self.workers], "loading new weights into the rollout workers")

    def update_from(self, model) -> None:
        from ..models.weights import unwrap_ddp, weights_version

        version = (id(model), weights_version(model))
        if version != self._synced:
            self.update_weights(unwrap_ddp(model).state_dict().items())
            self._synced = version

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        for worker in getattr(self, "workers", []):
            self.ray.kill(worker)
        self.workers = []
        if self.group is not None:
            self.ray.util.remove_placement_group(self.group)
            self.group = None


class RayRewardSource:
    """A reward source scored in a Ray actor (:class:`~alignkit.scale.workers.RewardWorker`); ``score`` as the
    reward-source interface, with the worker's failures raised as :class:`WorkerError`."""

    def __init__(self, spec, scale):
        from .workers import RewardWorker

        self.ray = connect(scale)
        self.spec = spec
        options = _schedule(self.ray, scale, scale.reward_cpus, scale.reward_gpus, None, None)
        self.worker = self.ray.remote(RewardWorker).options(**options).remote(spec, scale.reward_cpus)

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], *, progress: bool = False, **context: Any) -> torch.Tensor:
        return call(self.ray, self.worker.score.remote(list(prompts), list(completions), context), f"the reward worker ({self.spec!r})")

    def close(self) -> None:
        if self.worker is not None:
            self.ray.kill(self.worker)
            self.worker = None
