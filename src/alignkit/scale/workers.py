"""The actors of ``scale.backend: ray``, as plain classes (``ray.remote`` wraps them when a cluster is used, so
importing this module imports no Ray): a rollout worker holding a rollout engine over its own copy of the
policy, and a reward worker holding a reward source. Each method's exceptions travel to the driver with the
worker's traceback (:mod:`alignkit.scale.ray_engine`)."""

from __future__ import annotations

import os
import socket
from typing import Any, Sequence

import torch


def _worker_device() -> torch.device:
    """The GPU Ray gave this actor (``num_gpus`` > 0 sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") else torch.device("cpu")


def _threads(cpus: float) -> None:
    torch.set_num_threads(max(1, int(cpus)))


class RolloutWorker:
    """A rollout engine (``backend``: ``alignkit``, ``hf``, ``vllm`` or ``auto`` resolved on the worker's device)
    over the policy ``model`` shipped by the driver; :meth:`update_weights` loads named tensors into it."""

    def __init__(self, rank: int, model, tokenizer, backend: str = "alignkit", vllm_options=None, cpus: float = 1.0):
        from ..rollout import build_rollout_engine

        _threads(cpus)
        self.rank = rank
        model = model.to(_worker_device()).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.engine = build_rollout_engine(backend, model, tokenizer, vllm_options=vllm_options)
        self.version = 0

    def where(self) -> dict[str, Any]:
        """Where this worker runs: its rank, pid, host, Ray node id (one per raylet), device and engine."""
        import ray  # inside a Ray actor, so Ray is there

        return {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(),
                "device": str(_worker_device()), "engine": self.engine.name}

    def generate(self, prompt_ids: Sequence[Sequence[int]], job_ids: Sequence[int], sampling, batch_size: int) -> list:
        return self.engine.generate(prompt_ids=prompt_ids, n=1, job_ids=job_ids, sampling=sampling, batch_size=batch_size)

    def update_weights(self, named: dict[str, torch.Tensor], version: int) -> int:
        """Load ``named`` (``state_dict`` names) into the engine's model; returns the version now held."""
        self.engine.update_weights(named.items())
        self.version = version
        return version

    def close(self) -> None:
        self.engine.close()


class RewardWorker:
    """A reward source (any ``rl.reward`` spec: a task's gold reward, a reward model folder, ``module:function``,
    ...) built on the worker; :meth:`score` is the source's own."""

    def __init__(self, spec, cpus: float = 0.0):
        from ..rewards.sources import build_reward_source

        _threads(cpus or 1)
        self.source = build_reward_source(spec)

    def score(self, prompts: list, completions: list[str], context: dict[str, list]) -> torch.Tensor:
        return torch.as_tensor(self.source.score(prompts, completions, **context)).float().cpu()
