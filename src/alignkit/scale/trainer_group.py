"""A trainer group as Ray actors (``scale.backend: ray`` with ``scale.trainer_processes`` > 1, docs/scale.md).

The controller (the process that runs ``alignkit train``) reserves a placement group of one bundle per trainer
process (``trainer_cpus`` / ``trainer_gpus``), starts a :class:`TrainerWorker` in each and sets the variables a
launcher sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` of rank 0), so the engine
starts its process group (gloo on CPU, NCCL on GPU) exactly as under torchrun. Each trainer process then drives
its own rollout workers (and reward worker) for its share of the prompts. The controller waits for the group and
returns rank 0's final folder; a failing rank's traceback is raised in the controller (:class:`WorkerError`).

Paths in the recipe are read in the controller's working directory: each trainer process changes into it (the
same path must exist on every node: a shared file system or the same checkout).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


class TrainerWorker:
    """One process of the trainer group: the launcher's environment, then ``train_fn(recipe)``."""

    def __init__(self, rank: int, world: int, cpus: float, cwd: str):
        import torch

        self.rank, self.world = rank, world
        torch.set_num_threads(max(1, int(cpus)))
        if Path(cwd).is_dir():
            os.chdir(cwd)

    def address(self) -> tuple[str, int]:
        """This node's address and a free port on it (rank 0 hosts the process group's rendezvous)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def train(self, train_fn, recipe_data: dict, master: tuple[str, int]) -> str:
        from ..config import Recipe

        os.environ.update({"WORLD_SIZE": str(self.world), "RANK": str(self.rank), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1])})
        return str(train_fn(Recipe.model_validate(recipe_data)))


def run_trainer_group(recipe, train_fn) -> Path:
    """Run ``train_fn(recipe)`` in ``scale.trainer_processes`` Ray actors as one process group; rank 0's result."""
    from .ray_engine import WorkerError, call, connect

    scale = recipe.scale
    ray = connect(scale)
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    world = scale.trainer_processes
    bundle = {"CPU": scale.trainer_cpus, **({"GPU": scale.trainer_gpus} if scale.trainer_gpus else {})}
    group = placement_group([dict(bundle) for _ in range(world)], strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=scale.timeout_s)
    if not ready:
        remove_placement_group(group)
        raise WorkerError(f"scale.trainer_processes={world}: {world} bundles of {bundle} could not be placed within {scale.timeout_s:.0f} s; "
                          f"the cluster has {ray.cluster_resources()}")
    remote = ray.remote(TrainerWorker)
    actors = [remote.options(num_cpus=scale.trainer_cpus, num_gpus=scale.trainer_gpus,
                             scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=rank))
              .remote(rank, world, scale.trainer_cpus, os.getcwd()) for rank in range(world)]
    try:
        master = call(ray, actors[0].address.remote(), "trainer process 0")
        data = recipe.model_dump(mode="json")
        refs = [actor.train.remote(train_fn, data, master) for actor in actors]
        rank_of, results, pending = {ref: rank for rank, ref in enumerate(refs)}, {}, list(refs)
        while pending:  # the first rank to fail is raised at once (the others would wait in a collective)
            done, pending = ray.wait(pending, num_returns=1)
            results[rank_of[done[0]]] = call(ray, done[0], f"trainer process {rank_of[done[0]]} of {world}")
    finally:
        for actor in actors:
            ray.kill(actor)
        remove_placement_group(group)
    return Path(results[0])
