"""DeepSpeed ZeRO as distribution strategies: ``train.distributed: deepspeed_zero2 | deepspeed_zero3``.

The loop stays the engine's own (micro-batches, loss scaling, schedules, checkpoints); DeepSpeed owns what
ZeRO is about — where gradients, optimizer state and (stage 3) parameters live, and the update:

* :meth:`DeepSpeedStrategy.prepare` hands the trainer's AdamW (and so its learning-rate schedule, which keeps
  driving the same parameter groups) to ``deepspeed.initialize``; DeepSpeed wraps it in its ZeRO optimizer.
* Backward is the trainer's plain ``loss.backward()``: DeepSpeed's engine hooks the forward outputs
  (torch-style backward) and, with ``managed_gradient_accumulation: false``, every ``step()`` is the
  accumulation boundary, so any number of micro-batches per update works and the update is the engine's
  ``sum × processes / total weight`` mean, as under DDP. Gradient clipping is DeepSpeed's
  (``gradient_clipping`` = ``train.max_grad_norm``, the same coefficient as ``clip_grad_norm_``).
* Saving gathers the parameters (stage 3: ``deepspeed.zero.GatheredParameters``) and the optimizer state
  (``deepspeed.utils.safe_get_full_optimizer_state``) into ordinary full state dicts: checkpoints are
  ``save_pretrained`` folders with a torch AdamW ``optimizer.pt``, and resume scatters them back.

PPO's critic is in the engine module, so ZeRO partitions it with the policy; its values are read from the
critic itself (ZeRO-2) or from its replica (ZeRO-3), and :meth:`DeepSpeedStrategy.load_full` writes a checkpoint's
critic into the parameters and the fp32 master partitions (``safe_set_full_fp32_param``) on resume.

Online RL and LoRA: ZeRO-2 keeps full parameters on every process (DeepSpeed gathers the updated partitions
after each step), so sampling and old log-probs run on the model itself; ZeRO-3 partitions them, and the
trainer samples from a full-weights replica that :meth:`DeepSpeedZero3.sync_replica` refreshes after each
step inside ``GatheredParameters`` (see :mod:`alignkit.engine.strategies`). LoRA: only the adapters are in
the optimizer, so ZeRO partitions just their gradients and AdamW state.

Runs on CPUs with gloo (the tests: 2 processes give the 1-process weights) and on GPUs with NCCL; the
process group is the one :class:`~alignkit.engine.strategies.Strategy` starts from the launcher's variables.
DeepSpeed is an optional extra (``pip install 'alignkit[deepspeed]'``); see ``docs/scale.md``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .strategies import STRATEGIES, Strategy


def _deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError("train.distributed=deepspeed_zero2/deepspeed_zero3 needs DeepSpeed: pip install 'alignkit[deepspeed]' "
                          "(on a CPU-only machine: DS_BUILD_OPS=0 pip install --no-deps --no-build-isolation deepspeed, see docs/scale.md)") from e
    return deepspeed


def zero_config(stage: int, max_grad_norm: float | None) -> dict[str, Any]:
    """The DeepSpeed config of a ZeRO ``stage`` run under alignkit's loop (fp32 master weights; bf16 is the
    trainer's autocast). Batch sizes are placeholders: the loop, not DeepSpeed, makes the batches."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,  # every step() is the boundary: micro-batches per update vary
        "gradient_clipping": float(max_grad_norm or 0.0),
        "zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True},
        "zero_allow_untested_optimizer": True,  # torch's AdamW with fused=True
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def set_full_hp(param: nn.Parameter, value: torch.Tensor, key: str | None = None) -> None:
    """``safe_set_full_fp32_param`` (``key`` None) / ``safe_set_full_optimizer_state``: this process's share of the
    full tensor ``value`` into ZeRO's fp32 partition of ``param`` (or of its AdamW state ``key``). ZeRO-3 pads a
    parameter to equal partitions, and DeepSpeed narrows the unpadded value past its end when the parameter is
    smaller than its padding (a 1-element bias on 2 processes); here the padding is left as it is."""
    if not hasattr(param, "ds_id"):  # ZeRO-1/2
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        safe_set_full_fp32_param(param, value) if key is None else safe_set_full_optimizer_state(param, value, key)
        return
    zero = param._z3_optimizer
    if not param.requires_grad:
        return
    part, group = zero._get_fp32_opt_state_partition(param, release_swap_buffers=False, optim_state_key=key)
    start = part.numel() * zero._get_param_partition_rank(param)
    piece = value.flatten()[start : start + part.numel()]
    part.data[: piece.numel()].copy_(piece.to(part.device, part.dtype))
    if zero._swappable_optimizer_subgroup(group):
        zero._optimizer_states_and_gradient_swap_out(group)


class EngineModule(nn.Module):
    """What the loop runs forward on: the DeepSpeed engine behind a plain module (no ``no_sync``: ZeRO-2/3
    reduce gradients in every backward)."""

    def __init__(self, engine):
        super().__init__()
        self.engine = engine

    @property
    def module(self) -> nn.Module:
        """The engine module inside (what DDP's ``.module`` is: code that reads the model looks here)."""
        return self.engine.module

    def forward(self, *args, **kwargs):
        return self.engine(*args, **kwargs)


class PendingEngine(nn.Module):
    """What :meth:`DeepSpeedStrategy.wrap` returns: the engine module, for the trainer to build its optimizer
    over, until :meth:`DeepSpeedStrategy.prepare` replaces it by the DeepSpeed engine. Running it is an
    error: a loop that never called ``prepare`` would train each process on its own."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    @property
    def module(self) -> nn.Module:
        return self.inner

    def forward(self, *args, **kwargs):
        raise RuntimeError("a DeepSpeed strategy runs only after Strategy.prepare(policy, optimizer, train) hands it the optimizer")


class ZeroOptimizer:
    """The trainer's view of DeepSpeed's ZeRO optimizer. ``step`` is ``engine.step()`` (reduce, clip, AdamW
    on this process's partition, gather); ``param_groups``/``state`` are the wrapped AdamW's (the schedule
    sets their ``lr``; ``state`` holds only this process's partition). ``state_dict``/``load_state_dict``
    are collectives that speak torch AdamW's per-parameter format, so checkpoints do not depend on the
    number of processes or on the strategy."""

    def __init__(self, engine, inner: torch.optim.Optimizer, groups: list[list[nn.Parameter]], empty: list[tuple[int, dict]] = ()):
        self.engine, self.inner, self.groups = engine, inner, groups
        self.empty = list(empty)  # (position, hyper-parameters) of the trainer's groups without parameters, kept out of ZeRO

    @property
    def param_groups(self):
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    def step(self) -> None:
        self.engine.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.engine.optimizer.zero_grad(set_to_none=set_to_none)

    def _flat_partitions(self) -> list[torch.Tensor]:
        zero = self.engine.optimizer
        return list(getattr(zero, "single_partition_of_fp32_groups", None) or zero.fp32_partitioned_groups_flat)

    def _link_state(self) -> None:
        """Make sure every flat fp32 partition has AdamW state (zeros before the first step, as torch's AdamW
        starts) and that ZeRO-1/2's per-parameter views point at it: DeepSpeed links them once, after the
        first parameter group's step, so a second group (alignkit's no-decay parameters) is left unlinked."""
        groups = {id(p): g for g in self.inner.param_groups for p in g["params"]}
        for flat in self._flat_partitions():
            if flat not in self.inner.state or "exp_avg" not in self.inner.state[flat]:
                group = groups.get(id(flat), {})
                device = flat.device if group.get("fused") or group.get("capturable") else torch.device("cpu")
                self.inner.state[flat] = {"step": torch.zeros((), dtype=torch.float32, device=device),
                                          "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
        zero = self.engine.optimizer
        if hasattr(zero, "_hp_optimizer_states_linked"):
            zero._hp_optimizer_states_linked = False
            zero._lazy_init_hp_params_optimizer_state()

    def _step_count(self) -> torch.Tensor:
        for state in self.inner.state.values():
            if "step" in state:
                return torch.as_tensor(state["step"]).detach().clone().float().cpu()
        return torch.zeros(())

    def state_dict(self) -> dict[str, Any]:
        from deepspeed.utils import safe_get_full_optimizer_state

        self._link_state()
        step = self._step_count()
        state, groups, index = {}, [], 0
        for group, params in zip(self.inner.param_groups, self.groups):
            ids = list(range(index, index + len(params)))
            index += len(params)
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
            for i, p in zip(ids, params):
                moments = {key: safe_get_full_optimizer_state(p, key) for key in ("exp_avg", "exp_avg_sq")}
                if all(m is not None for m in moments.values()):
                    state[i] = {"step": step.clone(), **{k: m.detach().cpu().clone().reshape(p.ds_shape if hasattr(p, "ds_shape") else p.shape)
                                                          for k, m in moments.items()}}
        for position, hyper in self.empty:  # as torch lists it: the first group's settings (one schedule drives all), its own decay
            groups.insert(position, {**self.inner.defaults, **(groups[0] if groups else {}), **hyper, "params": []})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        saved_groups = [g for g in saved["param_groups"] if g["params"]]  # groups without parameters stay out of ZeRO
        if len(saved_groups) != len(self.groups):
            raise ValueError(f"optimizer state has {len(saved_groups)} parameter groups with parameters, this run {len(self.groups)}")
        self._link_state()
        step = None
        for group, saved_group, params in zip(self.inner.param_groups, saved_groups, self.groups):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
            for i, p in zip(saved_group["params"], params):
                entry = saved["state"].get(i, saved["state"].get(str(i)))
                if entry is None:
                    continue
                step = entry["step"]
                for key in ("exp_avg", "exp_avg_sq"):
                    set_full_hp(p, entry[key].to(torch.float32), key)
        if step is not None:  # the partitions' shared step count
            for state in self.inner.state.values():
                if "step" in state:
                    state["step"] = torch.as_tensor(step, dtype=torch.float32).clone().to(torch.as_tensor(state["step"]).device)


class DeepSpeedStrategy(Strategy):
    """ZeRO over the launcher's processes: stage 2 partitions gradients and optimizer state, stage 3 also the
    parameters. The model is replicated by DeepSpeed's own broadcast from process 0 at ``prepare``."""

    name = "deepspeed"
    stage = 2
    sharded = False  # the optimizer's state dicts are already full (ZeroOptimizer); parameters are gathered in full_states

    def __init__(self) -> None:
        super().__init__()
        _deepspeed()  # a clear error before any model work when DeepSpeed is missing

    def wrap(self, model, module):
        return PendingEngine(module)  # the engine is built in prepare, around the trainer's optimizer

    def prepare(self, policy, optimizer, train):
        deepspeed = _deepspeed()
        groups = [list(g["params"]) for g in optimizer.param_groups]  # before ZeRO swaps in its flat partitions
        engine, _, _, _ = deepspeed.initialize(model=policy.inner, optimizer=optimizer, config=zero_config(self.stage, train.max_grad_norm),
                                               dist_init_required=False)
        return EngineModule(engine), ZeroOptimizer(engine, optimizer, groups, getattr(self, "_empty_groups", []))

    def optimizer_groups(self, groups):
        """Without the empty groups (LoRA: no trainable 1-D weight), which DeepSpeed would drop from under the
        schedule; the checkpoints still list them, in the 1-process torch format."""
        self._empty_groups = [(i, {k: v for k, v in g.items() if k != "params"}) for i, g in enumerate(groups) if not g["params"]]
        return [g for g in groups if g["params"]]

    def clip_grad_norm(self, params, max_norm):
        return None  # DeepSpeed clips inside step() (gradient_clipping)

    def _gathered(self, model, modifier: bool = False):
        return contextlib.nullcontext()

    def load_full(self, module, state):
        params = dict(module.named_parameters())
        if set(state) != set(module.state_dict()):
            raise ValueError(f"state does not match the module: {sorted(set(state) ^ set(module.state_dict()))[:3]}")
        with self._gathered(module, modifier=True), torch.no_grad():  # stage 3: process 0's writes are partitioned on exit
            for name, tensor in {**params, **dict(module.named_buffers())}.items():
                if name in state:
                    tensor.data.copy_(state[name].to(tensor.device, tensor.dtype).view(tensor.data.shape))
        for name, p in params.items():  # the optimizer's fp32 master copy, which the next step starts from
            if p.requires_grad:
                set_full_hp(p, state[name].to(self.device, torch.float32))

    def full_states(self, model, policy, optimizer):
        with self._gathered(model):
            model_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if self.is_main else {}
        return model_state, optimizer.state_dict()


@STRATEGIES.register("deepspeed_zero2")
class DeepSpeedZero2(DeepSpeedStrategy):
    name = "deepspeed_zero2"
    stage = 2


@STRATEGIES.register("deepspeed_zero3")
class DeepSpeedZero3(DeepSpeedStrategy):
    name = "deepspeed_zero3"
    stage = 3

    replicates = True  # partitioned parameters: sampling and old log-probs run on a full-weights replica

    def _gathered(self, model, modifier: bool = False):
        return _deepspeed().zero.GatheredParameters(list(model.parameters()), modifier_rank=0 if modifier else None)

    def sync_replica(self, model, replica):
        trained = self._trained(model)
        mirror = dict(replica.named_parameters())
        with _deepspeed().zero.GatheredParameters([p for _, p in trained], modifier_rank=None), torch.no_grad():
            for name, p in trained:  # inside the context every process holds the full tensor
                mirror[name].copy_(p.data.view(mirror[name].shape))
