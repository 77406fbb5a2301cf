"""One training loop for every algorithm.

AdamW with warmup + linear/cosine decay, gradient accumulation whose loss scale does not depend on how a
batch is split (micro-batches or processes), gradient clipping, bf16 autocast or fp32, deterministic data
order, periodic evaluation, atomic checkpoints and exact resume. Runs unchanged in one process or under
``torchrun``/``accelerate launch`` (DDP; gloo on CPU, NCCL on GPU).

Data order: the examples of epoch ``e`` are a permutation drawn from a generator seeded with
``seed + e``; step ``s`` takes the ``s``-th slice of ``batch_size`` examples of that epoch, each process
takes its own contiguous share of the slice and splits it into micro-batches. The order depends only on
(seed, step), which is what makes a resumed run and a 2-process run identical to an uninterrupted
1-process run.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..algorithms.base import Algorithm
from ..config import Recipe, dump_recipe
from ..data.encode import Encoder, encode_records
from ..data.records import load_records
from ..models.weights import mark_updated
from ..models.loading import is_peft, load_tokenizer, save_policy
from .checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from .tracking import MetricsLog


class Distributed:
    """Process layout from the launcher's environment (``torchrun`` / ``accelerate launch`` set RANK,
    WORLD_SIZE, LOCAL_RANK): NCCL on GPUs, gloo on CPUs; one process when WORLD_SIZE is unset."""

    def __init__(self) -> None:
        import os

        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        if self.world > 1 and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        self.is_main = self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
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

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def make_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def train_state_mb(params: list[torch.Tensor], optimizer) -> float:
    """Memory held by the trained parameters, their gradients and the optimizer state (MB)."""
    total = sum(p.numel() * p.element_size() * 2 for p in params)  # weights + gradients
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total / 2**20


def lr_lambda(kind: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


class Trainer:
    """``Trainer(recipe, algorithm).train()`` runs the loop and returns the final model's folder."""

    def __init__(self, recipe: Recipe, algorithm: Algorithm):
        self.recipe = recipe
        self.algorithm = algorithm
        self.cfg = recipe.train
        self.dist = Distributed()
        self.device = self.dist.device
        self.run_dir = recipe.output_dir
        self.autocast_dtype = torch.bfloat16 if self.cfg.precision == "bf16" else None
        self.current_step = 0
        self.resumed_from: Path | None = None

    # ----------------------------------------------------------------------------------------------
    # set-up
    # ----------------------------------------------------------------------------------------------
    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _seed(self) -> None:
        seed = self.cfg.seed
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            import numpy as np

            np.random.seed(seed)
        except ImportError:
            pass

    def _resume_from(self) -> Path | None:
        resume = self.cfg.resume
        if resume is False or resume is None:
            return None
        if resume is True:
            found = latest_checkpoint(self.run_dir)
            if found is None and self.dist.is_main:
                print(f"[alignkit] resume: no checkpoint in {self.run_dir}, starting from scratch")
            return found
        path = Path(resume)
        if not (path / "state.json").exists():
            raise FileNotFoundError(f"train.resume: {path} is not a checkpoint folder (no state.json)")
        return path

    def _base_model_path(self) -> Path:
        if self.recipe.model.path:
            return Path(self.recipe.model.path)
        from ..tasks import get_task
        from ..models.tiny import build_tiny

        path = self.run_dir / "initial-model"
        if self.dist.is_main and not (path / "config.json").exists():
            build_tiny(path, get_task(self.recipe.task).corpus(), self.recipe.model.tiny)
        self.dist.barrier()
        return path

    def _load_model(self, checkpoint: Path | None):
        base = self._base_model_path()
        self.tokenizer = load_tokenizer(base, self.recipe.model.trust_remote_code)
        model_cfg = self.recipe.model
        load = self.algorithm.load_model
        if checkpoint is None:
            model = load(base, model_cfg)
        elif model_cfg.lora is not None:
            model = load(base, model_cfg.model_copy(update={"lora": None}), adapter=checkpoint / "model")
        else:
            model = load(checkpoint / "model", model_cfg)
        return model.to(self.device)

    def frozen_reference(self) -> torch.nn.Module:
        """A frozen copy of the *starting* policy (on resume, loaded again from the starting weights,
        not copied from the resumed policy). LoRA runs use the policy with its adapter disabled instead."""
        if self.resumed_from is None:
            reference = copy.deepcopy(self.model)
        else:
            reference = self.algorithm.load_model(self._base_model_path(), self.recipe.model.model_copy(update={"lora": None})).to(self.device)
        reference.eval()
        reference.requires_grad_(False)
        return reference

    def load_examples(self, source: str | None, split: str) -> list[dict[str, Any]] | None:
        from ..tasks import get_task, task_rows

        data = self.recipe.data
        kind = self.algorithm.data_kind if data.kind == "auto" else data.kind
        if source is None:
            n = self.recipe.task.n_train if split == "train" else self.recipe.task.n_eval
            if split != "train" and (data.train is not None or n == 0):
                return None
            rows = task_rows(get_task(self.recipe.task), kind, n, split, self.recipe.task)
            name = f"<task {self.recipe.task.name}:{split}>"
        else:
            rows, name = source, source
        records, summary = load_records(rows, kind=kind, skip_invalid=data.skip_invalid)
        encoder = Encoder(self.tokenizer, data.max_length, data.truncation, source=name)
        examples = self.algorithm.prepare_examples(encode_records(records, kind, encoder, summary), kind)
        if summary.n_skipped and self.dist.is_main:
            print(f"[alignkit] {summary}")
            (self.run_dir / f"skipped-{split}.txt").write_text(str(summary) + "\n")
        for i, e in enumerate(examples):
            e["index"] = i
        return examples

    def _optimizer(self, model: torch.nn.Module):
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # torch's fused AdamW kernel (CPU and CUDA): the same update in one pass over the parameters instead of
        # a Python loop of small ops (on CPU torch's default is that loop: 13.7 -> 3.0 ms per step on the
        # benchmark model). Sharded (DTensor) parameters keep the default implementation.
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) and type(p) is torch.nn.Parameter
                    for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.adam_betas, eps=self.cfg.adam_eps, fused=fused or None)

    # ----------------------------------------------------------------------------------------------
    # batches
    # ----------------------------------------------------------------------------------------------
    def step_indices(self, step: int, n: int) -> list[int]:
        """This process's example indices for optimizer step ``step``."""
        bs = self.cfg.batch_size
        per_epoch = n // bs
        epoch, pos = divmod(step, per_epoch)
        if self.algorithm.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
        else:  # the algorithm's own order (e.g. a curriculum)
            order = torch.arange(n)
        perm = order[pos * bs : (pos + 1) * bs].tolist()
        share = bs // self.dist.world
        return perm[self.dist.rank * share : (self.dist.rank + 1) * share]

    def collate(self, chunk: list[dict]) -> dict[str, torch.Tensor]:
        """One batch of ``chunk`` on the run's device."""
        batch = self.algorithm.collate(chunk, self.tokenizer.pad_token_id)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def micro_batches(self, examples: list[dict], indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """This process's share of a step, split by ``train.micro_batch_size`` (in order) or, with
        ``train.micro_batch_tokens``, into length buckets: examples sorted by length and grouped so that a
        micro-batch's padded size (rows x longest) stays within the budget. The engine's loss scaling makes
        every split give the same update; bucketing only removes padding work."""
        units: list[list[int]] = []  # examples that must share a micro-batch (a pair, a group)
        for i in indices:
            key = self.algorithm.unit_key(examples[i])
            if units and key is not None and self.algorithm.unit_key(examples[units[-1][-1]]) == key:
                units[-1].append(i)
            else:
                units.append([i])
        budget = self.cfg.micro_batch_tokens
        if budget is None:
            size = self.cfg.micro_batch_size or len(indices)
            out, current = [], []
            for u in units:
                current += u
                if len(current) >= size:
                    out.append(self.collate([examples[i] for i in current]))
                    current = []
            if current:
                out.append(self.collate([examples[i] for i in current]))
            return out
        rows_of = {id(u): self.algorithm.unit_rows([examples[i] for i in u]) for u in units}
        units.sort(key=lambda u: max(rows_of[id(u)]))
        out, current, n_rows, longest = [], [], 0, 0
        for u in units:
            rows = rows_of[id(u)]
            if current and (n_rows + len(rows)) * max(longest, max(rows)) > budget:
                out.append(self.collate([examples[i] for i in current]))
                current, n_rows, longest = [], 0, 0
            current += u
            n_rows += len(rows)
            longest = max(longest, max(rows))
        if current:
            out.append(self.collate([examples[i] for i in current]))
        return out

    def _check_layout(self, n: int) -> None:
        bs, world, mbs = self.cfg.batch_size, self.dist.world, self.cfg.micro_batch_size
        if n < bs:
            raise ValueError(f"the training data has {n} examples, fewer than train.batch_size={bs}")
        if bs % world:
            raise ValueError(f"train.batch_size={bs} must be divisible by the number of processes ({world})")
        if mbs is not None and (bs // world) % mbs:
            raise ValueError(f"train.batch_size / processes = {bs // world} must be a multiple of train.micro_batch_size={mbs}")

    # ----------------------------------------------------------------------------------------------
    # the loop
    # ----------------------------------------------------------------------------------------------
    def run_batches(self, policy, batches, train: bool) -> tuple[torch.Tensor, dict[str, list[float]]]:
        """Forward (and backward when ``train``) over micro-batches that make one step; returns the
        global mean loss and the globally reduced metrics."""
        self.algorithm.before_update(self, policy, batches)
        weights = torch.tensor([float(sum(self.algorithm.weight(b) for b in batches))], device=self.device)
        total_weight = self.dist.sum(weights).item()
        if total_weight <= 0:
            raise ValueError("a batch with nothing to train on (no completion tokens)")
        loss_total = torch.zeros((), device=self.device)
        sums: dict[str, list[float]] = {}
        for i, batch in enumerate(batches):
            sync = (not train) or i == len(batches) - 1 or not hasattr(policy, "no_sync")
            ctx = contextlib.nullcontext() if sync else policy.no_sync()
            with ctx, (contextlib.nullcontext() if train else torch.no_grad()):
                with self.autocast():
                    loss_sum, metrics = self.algorithm.loss(policy, batch)
                if train:
                    (loss_sum * (self.dist.world / total_weight)).backward()
            loss_total += loss_sum.detach().float()
            for name, (value, count) in metrics.items():
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0] += float(value)
                acc[1] += float(count)
        names = sorted(sums)
        packed = torch.tensor([loss_total.item()] + [v for n in names for v in sums[n]], device=self.device, dtype=torch.float64)
        packed = self.dist.sum(packed).tolist()
        metrics_out = {n: packed[1 + 2 * j] / max(packed[2 + 2 * j], 1e-12) for j, n in enumerate(names)}
        return torch.tensor(packed[0] / total_weight), metrics_out

    def _fully_shard(self, model, policy):
        """FSDP2 (``torch.distributed.fsdp.fully_shard``): each decoder layer is its own shard group, the
        rest of the model goes with the engine module. Gradients are averaged over processes, as DDP's."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from ..models.logprobs import _unwrap

        mesh = init_device_mesh(self.device.type, (self.dist.world,))
        core = _unwrap(model)
        decoder = core.get_decoder() if hasattr(core, "get_decoder") else getattr(core, "model", None)
        for layer in getattr(decoder, "layers", []):
            fully_shard(layer, mesh=mesh)
        return fully_shard(policy, mesh=mesh)

    def _full_states(self, model, policy, optimizer) -> tuple[dict, dict]:
        """Full model and optimizer state dicts gathered from the FSDP2 shards (a collective; the main
        process receives them, the others get empty dicts)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options), get_optimizer_state_dict(policy, optimizer, options=options)

    def optimize(self, policy, steps: list[list[dict]], params, optimizer, scheduler):
        """One optimizer update per list of micro-batches; returns (losses, last metrics, grad norm, lr used)."""
        losses, metrics, grad_norm, lr = [], {}, None, scheduler.get_last_lr()[0]
        for batches in self.all_processes_have(steps):
            loss, metrics = self.run_batches(policy, batches, train=True)
            losses.append(loss.item())
            if self.cfg.max_grad_norm is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm).item()
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            mark_updated(self.model)  # fused optimizers do not bump parameter versions; samplers mirroring the weights look here
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        return losses, metrics, grad_norm, lr

    def mean_over_processes(self, stats: dict[str, float]) -> dict[str, float]:
        if self.dist.world == 1 or not stats:
            return stats
        names = sorted(stats)
        values = self.dist.sum(torch.tensor([stats[n] for n in names], dtype=torch.float64, device=self.device))
        return {n: v / self.dist.world for n, v in zip(names, values.tolist())}

    def all_processes_have(self, steps: list) -> list:
        """Optimizer steps every process takes part in (a process whose rollout kept fewer samples
        must not leave the others waiting in an all-reduce)."""
        if self.dist.world == 1:
            return steps
        counts = torch.tensor([len(steps)], device=self.device)
        torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MIN)
        return steps[: int(counts.item())]

    def evaluate(self, policy, examples: list[dict]) -> dict[str, float]:
        if hasattr(self.algorithm, "evaluate"):
            mine = [examples[i] for i in range(self.dist.rank, len(examples), self.dist.world)]
            return {f"eval/{k}": v for k, v in self.mean_over_processes(self.algorithm.evaluate(self, mine)).items()}
        policy.eval()
        mine = list(range(self.dist.rank, len(examples), self.dist.world))
        batches = self.micro_batches(examples, mine) if mine else []
        loss, metrics = self.run_batches(policy, batches, train=False)
        policy.train()
        return {"eval/loss": loss.item(), **{f"eval/{k}": v for k, v in metrics.items()}}

    def train(self) -> Path:
        self._seed()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_recipe(self.recipe, self.run_dir / "config.yaml")
        self.dist.barrier()
        checkpoint = self._resume_from()
        self.resumed_from = checkpoint
        model = self._load_model(checkpoint)
        self.model = model
        train_examples = self.load_examples(self.recipe.data.train, "train")
        eval_examples = self.load_examples(self.recipe.data.eval, "eval")
        self.train_examples, self.eval_examples = train_examples, eval_examples
        self._check_layout(len(train_examples))
        self.algorithm.setup(self)

        policy: torch.nn.Module = self.algorithm.module(model)
        self.fsdp = self.dist.world > 1 and self.cfg.distributed == "fsdp2"
        if self.fsdp:
            policy = self._fully_shard(model, policy)
        elif self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            policy = DistributedDataParallel(policy, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        optimizer = self._optimizer(policy)
        per_epoch = len(train_examples) // self.cfg.batch_size
        total = self.cfg.max_steps or max(1, math.ceil(self.cfg.epochs * per_epoch))
        updates = self.algorithm.updates_per_step()
        warmup = self.cfg.warmup_steps if self.cfg.warmup_steps is not None else int(self.cfg.warmup_ratio * total * updates)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg.scheduler, warmup, total * updates))
        start = 0
        if checkpoint is not None:
            start = load_training_state(checkpoint, optimizer, scheduler, self.algorithm.extra_modules(), policy if self.fsdp else None)["step"]
            if self.dist.is_main:
                print(f"[alignkit] resumed from {checkpoint} at step {start}")
        log = MetricsLog(self.run_dir, self.cfg.report_to, self.recipe.model_dump(mode="json"), enabled=self.dist.is_main)
        if checkpoint is None and self.dist.is_main and log.path.exists():
            log.path.unlink()  # a fresh run replaces the old metrics
        params = [p for p in policy.parameters() if p.requires_grad]
        policy.train()
        progress = make_progress(self.cfg.progress and self.dist.is_main)
        if eval_examples and self.cfg.eval_every and start == 0:
            log.log({"step": 0, **self.evaluate(policy, eval_examples)})  # the starting point of every eval curve
        with progress:
            bar = progress.add_task(f"{self.algorithm.name} train", total=total, completed=start, info="")
            window_t, window_ex, window_tok = time.perf_counter(), 0, 0
            for step in range(start, total):
                self.current_step = step
                indices = self.step_indices(step, len(train_examples))
                if hasattr(self.algorithm, "rollout"):
                    policy.eval()
                    steps, rollout_stats = self.algorithm.rollout(self, [train_examples[i] for i in indices])
                    policy.train()
                    rollout_stats = self.mean_over_processes(rollout_stats)
                else:
                    steps, rollout_stats = [self.micro_batches(train_examples, indices)], {}
                losses, metrics, grad_norm, lr = self.optimize(policy, steps, params, optimizer, scheduler)
                loss = torch.tensor(sum(losses) / len(losses) if losses else float("nan"))
                metrics = {**rollout_stats, **metrics}
                batches = [b for update in steps[:1] for b in update]
                self.algorithm.after_step(self, step + 1)
                window_ex += self.cfg.batch_size
                window_tok += int(sum(b["attention_mask"].sum().item() for b in batches)) * self.dist.world
                done = step + 1
                progress.update(bar, completed=done, info=f"loss {loss.item():.4f}")
                if done % self.cfg.log_every == 0 or done == total:
                    elapsed = time.perf_counter() - window_t
                    record = {"step": done, "epoch": step / per_epoch, "lr": lr, "loss": loss.item(), **metrics}
                    if grad_norm is not None:
                        record["grad_norm"] = grad_norm
                    if len(losses) > 1:
                        record["updates"] = len(losses)
                    record["processes"] = self.dist.world
                    record["memory/train_state_mb"] = train_state_mb(params, optimizer)
                    record["examples_per_s"] = window_ex / elapsed
                    record["tokens_per_s"] = window_tok / elapsed
                    log.log(record)
                    window_t, window_ex, window_tok = time.perf_counter(), 0, 0
                if eval_examples and self.cfg.eval_every and (done % self.cfg.eval_every == 0 or done == total):
                    log.log({"step": done, **self.evaluate(policy, eval_examples)})
                if self.cfg.save_every and done % self.cfg.save_every == 0 and done < total:
                    full_states = self._full_states(model, policy, optimizer) if self.fsdp else None
                    if self.dist.is_main:
                        save_checkpoint(self.run_dir, done, model, self.tokenizer, optimizer, scheduler, {"epoch": step / per_epoch},
                                        self.cfg.save_total_limit, self.algorithm.extra_modules(), full_states)
                    self.dist.barrier()
        log.close()
        final = self.run_dir / "final"
        full_states = self._full_states(model, policy, optimizer) if self.fsdp and self.cfg.save_final else None
        if self.cfg.save_final and self.dist.is_main:
            save_policy(model, self.tokenizer, final, state_dict=full_states[0] if full_states else None)
            if is_peft(model):
                save_policy(model, self.tokenizer, self.run_dir / "final-merged", merge_lora=True)
        self.dist.barrier()
        self.dist.close()
        return final
