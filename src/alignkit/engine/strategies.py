"""Distribution strategies: how the one loop runs over processes.

A strategy owns the process layout (read from the launcher's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``, as
``torchrun`` and ``accelerate launch`` set them; gloo on CPUs, NCCL on GPUs), wrapping the engine module,
full state dicts for saving, and every collective the loop and the algorithms use (``sum``, ``gather``,
``mean``, ``min_count``, ``barrier``). Algorithm code reaches collectives only through the strategy, so
a strategy that is not torch.distributed (e.g. Ray actors) can stand in for it.

Registered: ``single`` (one process), ``ddp`` (DistributedDataParallel), ``fsdp2`` (``fully_shard`` per
decoder layer), ``deepspeed_zero2``/``deepspeed_zero3`` (:mod:`alignkit.engine.deepspeed`). ``train.distributed`` names the multi-process strategy; one process is always ``single``.

**Forward-only work on sharded weights.** Online RL samples, scores old log-probs and runs a LoRA
reference outside the wrapped forward, each process on its own share and for its own number of forward
calls, so it cannot run on parameters that live as shards (every FSDP2 / ZeRO-3 forward is a collective
that all processes must enter together). A strategy whose parameters are sharded therefore keeps a
*replica* (:meth:`Strategy.replica`): a plain, frozen copy of the model with the full weights, built before
wrapping, which the trainer hands to the algorithm as ``ctx.model``; after every optimizer step
:meth:`Strategy.sync_replica` gathers the trained parameters into it (FSDP2: ``DTensor.full_tensor()``;
ZeRO-3: ``deepspeed.zero.GatheredParameters``) — a collective every process makes at the same point.
Frozen parameters (a LoRA base) are copied once and never gathered again. The cost is one full copy of the
weights per process (no gradients, no optimizer state); the rollout engine (alignkit's sampler or vLLM)
reads the replica as it reads the single-process model. PPO's critic follows the same pattern: it is wrapped
with the policy in the engine module, its values run on a replica of its own (``rl/ppo.py``), and
:meth:`Strategy.load_full` writes a checkpoint's full critic back into the sharded weights on resume.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from ..core.registry import Registry
from ..models.logprobs import _unwrap as unwrap_model

STRATEGIES: Registry[type["Strategy"]] = Registry("distribution strategy")


class Strategy:
    """One process (the base of every strategy): collectives are identities."""

    name = "single"
    sharded = False  # parameters live as shards: saving gathers full state dicts first
    replicates = False  # forward-only work (sampling, old log-probs, a LoRA reference) needs a full-weights replica

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        if self.world > 1 and not torch.distributed.is_initialized():
            if cuda:
                torch.cuda.set_device(self.local_rank)
            torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
        self.rank = torch.distributed.get_rank() if self.world > 1 else 0
        self.device = torch.device("cuda", self.local_rank) if cuda else torch.device("cpu")
        self.is_main = self.rank == 0

    # ---- collectives ---------------------------------------------------------------------------
    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over processes (a new tensor)."""
        if self.world == 1:
            return values
        values = values.clone()
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        return values

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every process's ``values`` (the same shape on each) concatenated along dim 0 in process order."""
        if self.world == 1:
            return values
        parts = [torch.empty_like(values) for _ in range(self.world)]
        torch.distributed.all_gather(parts, values.contiguous())
        return torch.cat(parts)

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Each statistic averaged over processes."""
        if self.world == 1 or not stats:
            return stats
        names = sorted(stats)
        values = self.sum(torch.tensor([stats[n] for n in names], dtype=torch.float64, device=self.device))
        return {n: v / self.world for n, v in zip(names, values.tolist())}

    def min_count(self, n: int) -> int:
        """The smallest ``n`` over processes (e.g. optimizer steps every process takes part in)."""
        if self.world == 1:
            return n
        counts = torch.tensor([n], device=self.device)
        torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MIN)
        return int(counts.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    # ---- models --------------------------------------------------------------------------------
    def wrap(self, model: nn.Module, module: nn.Module) -> nn.Module:
        """What the loop runs forward/backward on: the engine ``module`` built around ``model``."""
        return module

    def full_states(self, model: nn.Module, policy: nn.Module, optimizer) -> tuple[dict, dict] | None:
        """Full (model, optimizer) state dicts when parameters are sharded (a collective); else None."""
        return None

    def prepare(self, policy: nn.Module, optimizer, train) -> tuple[nn.Module, Any]:
        """After the optimizer and schedule exist: (module to run, optimizer to step). A strategy whose
        engine owns the update (DeepSpeed) takes the optimizer over here; ``train`` is ``recipe.train``."""
        return policy, optimizer

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> float | None:
        """Clip the gradients to ``max_norm`` before the update and return their norm (None: the engine
        clips inside its step and the norm is not known before it)."""
        return torch.nn.utils.clip_grad_norm_(params, max_norm).item()

    def optimizer_groups(self, groups: list[dict]) -> list[dict]:
        """The parameter groups the trainer's AdamW is built on (DeepSpeed leaves out empty ones)."""
        return groups

    def replica(self, model: nn.Module) -> nn.Module | None:
        """Before wrapping: a frozen full-weights copy of ``model`` for forward-only work when this strategy
        shards the parameters (:attr:`replicates`), else None (that work runs on ``model`` itself)."""
        if not self.replicates:
            return None
        mirror = copy.deepcopy(model)
        mirror.requires_grad_(False)
        return mirror.eval()

    def sync_replica(self, model: nn.Module, replica: nn.Module) -> None:
        """After an optimizer step: ``replica`` takes ``model``'s trained parameters (a collective)."""
        mirror = dict(replica.named_parameters())
        with torch.no_grad():
            for name, p in self._trained(model):
                mirror[name].copy_(self._full(p))

    def load_full(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Write full tensors ``state`` (``module``'s state dict as one process holds it, e.g. a checkpoint's PPO
        critic) into ``module`` wherever its weights live after wrapping: here the module itself; FSDP2: its
        shards; ZeRO: the parameters and the optimizer's fp32 master partitions (a collective there)."""
        module.load_state_dict(state)

    def _trained(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def _full(self, p: torch.Tensor) -> torch.Tensor:
        return p


STRATEGIES.register("single", Strategy)


@STRATEGIES.register("ddp")
class DDPStrategy(Strategy):
    """Replicated parameters, gradients all-reduced by DistributedDataParallel."""

    name = "ddp"

    def wrap(self, model, module):
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)


@STRATEGIES.register("fsdp2")
class FSDP2Strategy(Strategy):
    """FSDP2 (``torch.distributed.fsdp.fully_shard``): each decoder layer is its own shard group, the rest
    of the model goes with the engine module. Gradients are averaged over processes, as DDP's; saving
    gathers full state dicts (``torch.distributed.checkpoint.state_dict``), so checkpoints are ordinary
    ``save_pretrained`` folders."""

    name = "fsdp2"
    sharded = True
    replicates = True

    def wrap(self, model, module):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world,))
        core = unwrap_model(model)
        decoder = core.get_decoder() if hasattr(core, "get_decoder") else getattr(core, "model", None)
        kinds = tuple({type(layer) for layer in getattr(decoder, "layers", [])})
        # every decoder layer in the engine module is its own shard group: the policy's, and those of a copy of
        # its decoder the module trains beside it (PPO's critic)
        for layer in [m for m in module.modules() if kinds and isinstance(m, kinds)]:
            fully_shard(layer, mesh=mesh)
        return fully_shard(module, mesh=mesh)

    def load_full(self, module, state):
        from torch.distributed.tensor import DTensor, distribute_tensor

        targets = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        if set(state) != set(module.state_dict()):
            missing, extra = sorted(set(module.state_dict()) - set(state)), sorted(set(state) - set(module.state_dict()))
            raise ValueError(f"state does not match the module: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for name, value in state.items():
                target = targets[name]
                value = value.to(device=target.device, dtype=target.dtype)
                if isinstance(target, DTensor):  # this process's shard of the full tensor
                    value = distribute_tensor(value, target.device_mesh, target.placements)
                target.copy_(value)

    def full_states(self, model, policy, optimizer):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options), get_optimizer_state_dict(policy, optimizer, options=options)

    def _full(self, p):
        return p.full_tensor() if hasattr(p, "full_tensor") else p  # an all-gather of the DTensor's shards


def build_strategy(name: str = "ddp") -> Strategy:
    """The strategy for this launch: ``single`` in one process, else the registered ``name``."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Strategy()
    return STRATEGIES.get(name)()


from . import deepspeed as _deepspeed  # noqa: E402,F401 - registers deepspeed_zero2 / deepspeed_zero3 (DeepSpeed is imported only when used)
