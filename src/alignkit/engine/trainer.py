"""The long-lived trainer: one live policy, optimizer and strategy, and a ``fit`` that can be called again.

``Trainer(recipe, algorithm)`` loads the tokenizer and the policy (from the recipe's model, or from the
checkpoint it resumes) and picks the distribution strategy. ``fit(train_examples, ...)`` runs optimizer
steps over examples; it can be called repeatedly in one process — the model, optimizer, scheduler and
step counter carry over — which is what an iterative method does once per round. ``train()`` is the
front door of ``alignkit train``: load the recipe's data, resume, fit, save the final model.

Every step: AdamW with warmup + linear/cosine decay, gradient accumulation whose loss scale does not depend
on how a batch is split (micro-batches or processes), gradient clipping, bf16 autocast or fp32, the
deterministic data order of :mod:`alignkit.engine.loop`, periodic evaluation, atomic checkpoints and
exact resume. Algorithm hooks receive a :class:`~alignkit.engine.contract.Context`, never the trainer.

Faults (``docs/runs.md``): the run folder is locked while a trainer holds it and a fresh run refuses a folder
holding another run (``train.overwrite``); resume skips and names incomplete or corrupt checkpoints; SIGTERM
and SIGINT finish the current step, write a checkpoint and stop with :class:`Interrupted`; a non-finite loss
or gradient stops the run or skips the update (``train.nonfinite``), and non-finite weights are never saved.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import Recipe
from ..core.memory import retain_freed_memory
from ..core.progress import make_progress, say
from ..data.encode import Encoder, encode_records
from ..data.kinds import RECORD_KINDS
from ..data.records import load_records
from ..data.sources import read_options
from ..models.loading import is_peft, load_tokenizer, save_policy
from ..models.precision import cast_parameters
from ..models.reference import Reference, starting_reference
from ..models.sanity import warn_settings
from ..models.weights import mark_updated
from .batch_plan import announce_batch_plan
from .checkpoint import (
    RunError,
    atomic_folder,
    latest_checkpoint,
    load_training_state,
    model_folder_problem,
    read_state,
    remove_folder,
    save_checkpoint,
)
from .contract import Algorithm, Context
from .loop import DataOrder, check_layout, lr_lambda, micro_batch_groups, split_micro_batches
from .master_weights import MasterWeights
from .model_card import CardFacts, write_model_card
from .run_folder import RunFolder, StopSignals
from .strategies import Strategy, build_strategy
from .summary import BatchLayout, batch_banner, run_summary, summary_lines, trends, write_summary
from .tracking import MetricsLog, read_metrics, truncate_jsonl


def train_state_mb(params: list[torch.Tensor], optimizer) -> float:
    """Memory held by the trained parameters, their gradients and the optimizer state (MB)."""
    total = sum(p.numel() * p.element_size() * 2 for p in params)  # weights + gradients
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total / 2**20


class Interrupted(RunError):
    """SIGTERM or SIGINT: the current step was finished and a checkpoint written; the run can resume."""

    RESUME = "alignkit train <recipe> [overrides] train.resume=true"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class NonFiniteError(RunError):
    """A NaN/inf loss, gradient or weight (``train.nonfinite=stop``, or weights that cannot be saved)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


class Trainer:
    """The live policy of a run and everything needed to take optimizer steps on it."""

    def __init__(self, recipe: Recipe, algorithm: Algorithm, strategy: Strategy | None = None, schedule_steps: int | None = None):
        """``schedule_steps``: training steps the learning-rate schedule spans (an iterative method that
        calls :meth:`fit` once per round passes rounds x steps); default: the first fit's steps."""
        retain_freed_memory()  # the Python API too: large CPU tensors reuse mapped pages (core/memory.py)
        self.recipe = recipe
        self.algorithm = algorithm
        self.cfg = recipe.train
        self.strategy = strategy or build_strategy(self.cfg.distributed)
        self.batch_plan = announce_batch_plan(recipe, self.strategy)  # the batch vocabulary: checked, printed once (main process)
        self.device = self.strategy.device
        self.run_dir = recipe.output_dir
        self.autocast_dtype = torch.bfloat16 if self.cfg.precision == "bf16" else None
        # bf16_params: bf16 parameters (no autocast), fp32 master weights in the optimizer (engine/master_weights.py)
        self.master = MasterWeights() if self.cfg.precision == "bf16_params" else None  # one process or DDP (checked by TrainConfig)
        self.step = 0  # training steps taken by this trainer (over every fit)
        self.schedule_steps = schedule_steps
        self.nonfinite_skipped = 0  # updates skipped for a non-finite loss or gradient (train.nonfinite=skip)
        self.examples_seen = 0  # examples (prompts, pairs, ...) read by the steps taken, over all processes
        self.train_time = 0.0  # wall time of this process's training steps (seconds; this session only on resume)
        self.phase_time: dict[str, float] = {}  # online methods: seconds per phase (time/sample, ..., time/update), summed over steps
        self.signals = StopSignals(self.strategy, lambda: self.step + 1)
        self.folder = RunFolder(recipe, self.strategy)
        seed_everything(self.cfg.seed)
        problem = None
        if self.strategy.is_main:
            try:
                self.folder.claim()
            except RunError as e:
                problem = e
        self._agree(problem, f"the main process refused the run folder {self.run_dir}")
        try:
            self.resumed_from = self.folder.resume_point()
            self.model = self._load_model(self.resumed_from)
        except BaseException:
            self.folder.release()
            raise
        self.policy: torch.nn.Module | None = None  # the engine module, wrapped by the strategy (first fit)
        self.replica: torch.nn.Module | None = None  # sharded strategies: the full-weights copy forward-only work runs on
        self.optimizer = None
        self.scheduler = None
        self.log: MetricsLog | None = None
        self.train_examples: list[dict] | None = None
        self.order: DataOrder | None = None  # the current fit's data order
        self.eval_examples: list[dict] | None = None

    # ----------------------------------------------------------------------------------------------
    # loading
    # ----------------------------------------------------------------------------------------------
    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _agree(self, error: BaseException | None, what: str) -> None:
        """Raise ``error`` here and a :class:`RunError` on every other process when any process has one
        (a collective: every process calls it), so no process waits for one that stopped."""
        failed = error is not None
        if self.strategy.world > 1:
            failed = self.strategy.sum(torch.tensor([float(failed)], device=self.device)).item() > 0
        if error is not None:
            raise error
        if failed:
            raise RunError(f"{what} (see its error)")

    def _base_model_path(self) -> Path:
        if self.recipe.model.path:
            return Path(self.recipe.model.path)
        from ..models.tiny import build_tiny
        from ..tasks import get_task

        path = self.run_dir / "initial-model"
        if self.strategy.is_main:
            problem = model_folder_problem(path) if path.exists() else "missing"
            if problem is not None:
                if path.exists():  # a build that was killed (older versions wrote in place)
                    say(f"{path} is incomplete ({problem}); rebuilding it")
                    remove_folder(path)
                build_tiny(path, get_task(self.recipe.task).corpus(), self.recipe.model.tiny)
        self.strategy.barrier()
        return path

    def _load_model(self, checkpoint: Path | None):
        base = self._base_model_path()
        self.tokenizer = load_tokenizer(base, self.recipe.model.trust_remote_code)
        model_cfg = self.recipe.model
        load = self.algorithm.load_model
        if checkpoint is None:
            return load(base, model_cfg).to(self.device)
        try:
            if model_cfg.lora is not None:
                model = load(base, model_cfg.model_copy(update={"lora": None}), adapter=checkpoint / "model")
            else:
                model = load(checkpoint / "model", model_cfg)
        except (OSError, ValueError, RuntimeError) as e:
            raise RunError(f"checkpoint {checkpoint}: its model cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        return model.to(self.device)

    def _load_start(self) -> torch.nn.Module:
        """The starting weights again (a reference on resume), without LoRA; under bf16_params in bf16, as
        the reference of an uninterrupted run is."""
        model = self.algorithm.load_model(self._base_model_path(), self.recipe.model.model_copy(update={"lora": None})).to(self.device)
        return cast_parameters(model, self.master.dtype) if self.master is not None else model

    def reference(self, keep: bool = True, temperature: float = 1.0) -> Reference:
        """The starting policy as a :class:`Reference` (see :func:`starting_reference`)."""
        reference = starting_reference(self.forward_model, keep, self.resumed_from is not None, self._load_start)
        reference.temperature = temperature
        return reference

    def load_examples(self, source: str | list | None, split: str) -> list[dict[str, Any]] | None:
        """Encoded examples of ``source`` (a data file, rows, or None: the recipe's task split)."""
        from ..tasks import get_task, task_rows

        data = self.recipe.data
        kind = self.algorithm.data_kind if data.kind == "auto" else data.kind
        if kind not in RECORD_KINDS:
            raise ValueError(f"data.kind: {RECORD_KINDS.unknown(kind)}")
        if source is None:
            n = self.recipe.task.n_train if split == "train" else self.recipe.task.n_eval
            if split != "train" and (data.train is not None or n == 0):
                return None
            rows = task_rows(get_task(self.recipe.task), kind, n, split, self.recipe.task)
            name = f"<task {self.recipe.task.name}:{split}>"
        else:
            rows, name = source, source if isinstance(source, str) else f"<{split} rows>"
        read = read_options(data, "eval" if split == "eval" else "train") if isinstance(source, str) else None
        records, summary = load_records(rows, kind=kind, skip_invalid=data.skip_invalid, duplicates=data.duplicates, read=read)
        encoder = Encoder(self.tokenizer, data.max_length, data.truncation, source=name)
        examples = self.algorithm.prepare_examples(encode_records(records, kind, encoder, summary), kind)
        if summary.n_skipped and self.strategy.is_main:
            say(str(summary))
            (self.run_dir / f"skipped-{split}.txt").write_text(str(summary) + "\n")
        for i, e in enumerate(examples):
            e["index"] = i
        return examples

    def _optimizer(self, params: list[torch.nn.Parameter]):
        decay, no_decay = [], []
        for p in params:
            (no_decay if p.ndim < 2 else decay).append(p)
        groups = self.strategy.optimizer_groups([{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}])
        # torch's fused AdamW kernel (CPU and CUDA): the same update in one pass over the parameters instead of
        # a Python loop of small ops (on CPU torch's default is that loop: 13.7 -> 3.0 ms per step on the
        # benchmark model). Sharded (DTensor) parameters keep the default implementation.
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) and type(p) is torch.nn.Parameter
                    for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.adam_betas, eps=self.cfg.adam_eps, fused=fused or None)

    # ----------------------------------------------------------------------------------------------
    # batches and caches (what the context hands to algorithms)
    # ----------------------------------------------------------------------------------------------
    def collate(self, chunk: list[dict]) -> dict[str, torch.Tensor]:
        """One batch of ``chunk`` on the run's device."""
        batch = self.algorithm.collate(chunk, self.tokenizer.pad_token_id)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def micro_batches(self, examples: list[dict], indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """This process's share of a step split into micro-batches (:func:`split_micro_batches`)."""
        return split_micro_batches(self.algorithm, examples, indices, self.collate, self.cfg.micro_batch_size, self.cfg.micro_batch_tokens)

    def cache(self, examples: list[dict[str, Any]], compute, keys: tuple[str, ...], label: str = "reference log-probs",
              only: list[int] | None = None) -> None:
        """Evaluate ``compute(batch) -> [B, len(keys)]`` without gradient, in the run's precision, and store
        the values on the examples under ``keys``; split over processes and summed back.

        ``only``: the indices that need values (e.g. those the remaining steps read). Examples are batched
        in the same fixed chunks either way (:meth:`_cache_chunks`) and a chunk is computed when it holds a
        needed index, so a value never depends on which others were needed: a resumed or shortened run
        caches exactly the numbers of the full one."""
        strategy = self.strategy
        values = torch.zeros(len(examples), len(keys), dtype=torch.float64)
        chunks = self._cache_chunks(examples)
        if only is not None:
            needed = set(only)
            chunks = [(group, owned) for group, owned in chunks if needed.intersection(owned)]
        with make_progress(self.cfg.progress and strategy.is_main) as progress:
            bar = progress.add_task(label, total=sum(len(owned) for _, owned in chunks), info="")
            for group, owned in chunks:
                batch = self.collate([examples[i] for i in group])
                with torch.no_grad(), self.autocast():
                    out = compute(batch).double().cpu()
                values[owned] = out[[group.index(i) for i in owned]]
                progress.update(bar, advance=len(owned))
        values = strategy.sum(values.to(self.device)).cpu()
        computed = sorted({i for _, owned in chunks for i in owned}) if only is not None else range(len(examples))
        if only is not None:  # other processes' chunks count too
            flags = torch.zeros(len(examples), dtype=torch.float64)
            flags[list(computed)] = 1.0
            computed = strategy.sum(flags.to(self.device)).cpu().nonzero().flatten().tolist()
        rows = values.tolist()
        for i in computed:
            examples[i].update(zip(keys, rows[i]))

    def _cache_chunks(self, examples: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
        """This process's (batch, indices it supplies) for :meth:`cache`. The training examples go in the
        first epoch's micro-batches, the rows training reads first batched as training batches them: in
        bf16 a forward's roundings depend on the batch's shape, and so a cached reference equals the
        policy's first forward exactly (DPO's first loss is log 2). Each index is supplied by its first
        occurrence (an epoch's last batch may repeat examples to give every process an equal share). Other
        examples (evaluation): each process's strided share, ``micro_batch_size`` at a time."""
        strategy, cfg = self.strategy, self.cfg
        order = self.order if examples is self.train_examples else None
        if order is None:
            mine = list(range(strategy.rank, len(examples), strategy.world))
            size = cfg.micro_batch_size or max(1, cfg.batch_size // strategy.world)
            return [(mine[s : s + size],) * 2 for s in range(0, len(mine), size)]
        seen: set[int] = set()
        chunks = []
        for step in range(order.per_epoch):
            for rank in range(strategy.world):
                for group in micro_batch_groups(self.algorithm, examples, order.share(step, rank), cfg.micro_batch_size, cfg.micro_batch_tokens):
                    owned = list(dict.fromkeys(i for i in group if i not in seen))
                    seen.update(group)
                    if rank == strategy.rank and owned:
                        chunks.append((group, owned))
        return chunks

    @property
    def forward_model(self) -> torch.nn.Module:
        """What forward-only work (sampling, old log-probs, a LoRA reference) runs on: the model, or under a
        sharded strategy its full-weights replica (:meth:`Strategy.replica`), in step with every update."""
        return self.replica if self.replica is not None else self.model

    def context(self, order: DataOrder | None = None, start: int = 0, stop: int = 0) -> Context:
        """The narrow view of this trainer that algorithm hooks get."""
        return Context(
            model=self.forward_model, tokenizer=self.tokenizer, device=self.device, strategy=self.strategy, seed=self.cfg.seed,
            step=self.step, batch_size=self.cfg.batch_size, micro_batch_size=self.cfg.micro_batch_size, progress=self.cfg.progress,
            train_examples=self.train_examples, eval_examples=self.eval_examples, resumed=self.resumed_from is not None,
            autocast=self.autocast, collate=self.collate, micro_batches=self.micro_batches, reference=self.reference, cache=self.cache,
            used_indices=(lambda: order.used(start, stop)) if order is not None else (lambda: list(range(len(self.train_examples or [])))),
        )

    # ----------------------------------------------------------------------------------------------
    # one step
    # ----------------------------------------------------------------------------------------------
    def run_batches(self, policy, batches, train: bool, ctx: Context | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward (and backward when ``train``) over micro-batches that make one step; returns the
        global mean loss and the globally reduced metrics."""
        self.algorithm.before_update(ctx or self.context(), policy, batches)
        weights = torch.tensor([float(sum(self.algorithm.weight(b) for b in batches))], device=self.device)
        total_weight = self.strategy.sum(weights).item()
        if total_weight <= 0:
            raise ValueError("a batch with nothing to train on (no completion tokens)")
        loss_total = torch.zeros((), device=self.device)
        sums: dict[str, list[float]] = {}
        for i, batch in enumerate(batches):
            # bf16_params: DDP never reduces (the fp32 master gradients are reduced below)
            sync = (not train) or (i == len(batches) - 1 and self.master is None) or not hasattr(policy, "no_sync")
            ctx_sync = contextlib.nullcontext() if sync else policy.no_sync()
            with ctx_sync, (contextlib.nullcontext() if train else torch.no_grad()):
                with self.autocast():
                    loss_sum, metrics = self.algorithm.loss(policy, batch)
                if train:
                    (loss_sum * (self.strategy.world / total_weight)).backward()
                    if self.master is not None:
                        self.master.collect()
            loss_total += loss_sum.detach().float()
            for name, (value, count) in metrics.items():
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0] += float(value)
                acc[1] += float(count)
        if train and self.master is not None:
            self.master.reduce(self.strategy)
        names = sorted(sums)
        packed = torch.tensor([loss_total.item()] + [v for n in names for v in sums[n]], device=self.device, dtype=torch.float64)
        packed = self.strategy.sum(packed).tolist()
        metrics_out = {n: packed[1 + 2 * j] / max(packed[2 + 2 * j], 1e-12) for j, n in enumerate(names)}
        return torch.tensor(packed[0] / total_weight), metrics_out

    def optimize(self, steps: list[list[dict]], ctx: Context):
        """One optimizer update per list of micro-batches; returns (losses, last metrics, grad norm, lr used)."""
        losses, metrics, grad_norm, lr = [], {}, None, self.scheduler.get_last_lr()[0]
        params = self._params
        for batches in steps[: self.strategy.min_count(len(steps))]:  # updates every process takes part in
            loss, metrics = self.run_batches(self.policy, batches, train=True, ctx=ctx)
            losses.append(loss.item())
            norm = None
            if self.cfg.max_grad_norm is not None:
                norm = self.strategy.clip_grad_norm(params, self.cfg.max_grad_norm)
            if problem := self._nonfinite(losses[-1], norm, params):
                self.optimizer.zero_grad(set_to_none=True)
                if self.cfg.nonfinite == "stop":
                    last = latest_checkpoint(self.run_dir)
                    raise NonFiniteError(
                        f"step {self.step + 1}: {problem}; stopped before applying the update (train.nonfinite=stop), nothing saved as final "
                        f"({last.name + ' is the last checkpoint' if last else 'no checkpoint was written'}). Lower train.lr or clip gradients "
                        "(train.max_grad_norm), or set train.nonfinite=skip to skip such updates")
                self.nonfinite_skipped += 1
                say(f"step {self.step + 1}: {problem}; update skipped ({self.nonfinite_skipped} so far, train.nonfinite=skip)", self.strategy.is_main)
                self.scheduler.step()  # the schedule follows the steps, applied or not
                continue
            grad_norm = norm
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            if self.master is not None:
                self.master.publish()
            mark_updated(self.model)  # fused optimizers do not bump parameter versions; samplers mirroring the weights look here
            if self.replica is not None:  # a collective: every process takes the same updates
                self.strategy.sync_replica(self.model, self.replica)
                mark_updated(self.replica)
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return losses, metrics, grad_norm, lr

    def _nonfinite(self, loss: float, norm: float | None, params: list[torch.Tensor]) -> str | None:
        """What is not finite in this update (the loss, the gradient), the same answer on every process."""
        problem = None
        if not math.isfinite(loss):
            problem = f"the loss is {loss}"
        elif norm is not None and not math.isfinite(norm):
            problem = f"the gradient norm is {norm}"
        elif norm is None:
            grads = [g.to_local() if hasattr(g, "to_local") else g for p in params if (g := p.grad) is not None]
            if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
                problem = "the gradient holds NaN/inf values"
        if self.strategy.world > 1:
            anywhere = self.strategy.sum(torch.tensor([float(problem is not None)], device=self.device)).item() > 0
            if anywhere and problem is None:
                problem = "another process has a non-finite gradient"
        return problem

    def _check_finite_weights(self, what: str, state: dict | None = None) -> None:
        """Refuse to save non-finite weights (``state``: full state dict of a sharded model)."""
        named = state.items() if state is not None else self.model.named_parameters()
        bad = [name for name, t in named if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t.to_local() if hasattr(t, "to_local") else t).all())]
        if bad:
            raise NonFiniteError(f"the weights hold NaN/inf values after step {self.step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                                 f"{what} was not saved. Lower train.lr or clip gradients (train.max_grad_norm)")

    def evaluate(self, examples: list[dict], ctx: Context) -> dict[str, float]:
        strategy = self.strategy
        if hasattr(self.algorithm, "evaluate"):
            mine = [examples[i] for i in range(strategy.rank, len(examples), strategy.world)]
            return {f"eval/{k}": v for k, v in strategy.mean(self.algorithm.evaluate(ctx, mine)).items()}
        self.policy.eval()
        mine = list(range(strategy.rank, len(examples), strategy.world))
        batches = self.micro_batches(examples, mine) if mine else []
        loss, metrics = self.run_batches(self.policy, batches, train=False, ctx=ctx)
        self.policy.train()
        return {"eval/loss": loss.item(), **{f"eval/{k}": v for k, v in metrics.items()}}

    def full_precision(self):
        """While saving: the trained parameters in full precision (bf16_params: the fp32 masters)."""
        return self.master.full_precision() if self.master is not None else contextlib.nullcontext()

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """A resumable checkpoint at the current step (a collective: every process calls it)."""
        with self.full_precision():
            return self._save_checkpoint(state)

    def _save_checkpoint(self, state: dict[str, Any]) -> Path:
        full_states = self.strategy.full_states(self.model, self.policy, self.optimizer)
        error = None
        if self.strategy.is_main:
            try:
                self._check_finite_weights(f"checkpoint-{self.step}", full_states[0] if full_states else None)
                save_checkpoint(self.run_dir, self.step, self.forward_model, self.tokenizer, self.optimizer, self.scheduler,
                                {**state, "nonfinite_skipped": self.nonfinite_skipped}, self.cfg.save_total_limit, self.algorithm.extra_modules(), full_states)
            except Exception as e:  # noqa: BLE001 - shared with the other processes below, then raised
                error = e
        self._agree(error, f"the main process could not write checkpoint-{self.step}")
        return self.run_dir / f"checkpoint-{self.step}"

    def card_facts(self) -> CardFacts:
        """What the model card of a folder saved now states (main process: reads metrics.jsonl)."""
        return CardFacts(recipe=self.recipe, method=self.algorithm.name, n_examples=len(self.train_examples) if self.train_examples is not None else None,
                         steps=self.step, metrics=trends(read_metrics(self.run_dir), self.algorithm.key_metrics))

    def summary(self, final: Path | None) -> dict[str, Any]:
        """The end-of-training summary (:func:`~alignkit.engine.summary.run_summary`), from metrics.jsonl and the trainer's counts."""
        return run_summary(self.run_dir, algorithm=self.algorithm.name, steps=self.step, examples_seen=self.examples_seen, wall_s=self.train_time,
                           phase_s=dict(self.phase_time), key_metrics=self.algorithm.key_metrics, final=final)

    def save(self, out_dir: Path) -> Path:
        """The live policy as a ``save_pretrained`` folder (LoRA: the adapter, plus ``<out_dir>-merged``),
        written atomically; non-finite weights are refused."""
        with self.full_precision():
            return self._save(out_dir)

    def _save(self, out_dir: Path) -> Path:
        out_dir = Path(out_dir)
        full_states = self.strategy.full_states(self.model, self.policy, self.optimizer) if self.policy is not None else None
        error = None
        if self.strategy.is_main:
            try:
                self._check_finite_weights(out_dir.name, full_states[0] if full_states else None)
                last = latest_checkpoint(self.run_dir)
                describe = f"{last.name} is the last complete checkpoint" if last else "no checkpoint was written"
                facts = self.card_facts()
                with atomic_folder(out_dir, describe) as tmp:
                    save_policy(self.forward_model, self.tokenizer, tmp, state_dict=full_states[0] if full_states else None)
                    write_model_card(tmp, out_dir, CardFacts(**{**facts.__dict__, "adapter": is_peft(self.model)}))
                if is_peft(self.model):
                    merged = out_dir.parent / f"{out_dir.name}-merged"
                    with atomic_folder(merged, describe) as tmp:
                        save_policy(self.forward_model, self.tokenizer, tmp, merge_lora=True)
                        write_model_card(tmp, merged, CardFacts(**{**facts.__dict__, "merged_from": str(out_dir)}))
            except Exception as e:  # noqa: BLE001 - shared with the other processes below, then raised
                error = e
        self._agree(error, f"the main process could not write {out_dir}")
        return out_dir

    # ----------------------------------------------------------------------------------------------
    # fit
    # ----------------------------------------------------------------------------------------------
    def _first_fit(self, total: int, start: int) -> None:
        """Wrap the engine module, build the optimizer and scheduler, restore a checkpoint's state."""
        engine = self.algorithm.module(self.model)
        if self.master is not None:
            self.master.adopt(engine)  # an engine's own parameters (a value head); the model's were adopted in prepare
        self.policy = self.strategy.wrap(self.model, engine)
        self.optimizer = self._optimizer(self.master.masters if self.master is not None else [p for p in self.policy.parameters() if p.requires_grad])
        updates = self.algorithm.updates_per_step()
        warmup = self.cfg.warmup_steps if self.cfg.warmup_steps is not None else int(self.cfg.warmup_ratio * (self.schedule_steps or total) * updates)
        span = (self.schedule_steps or total) * updates
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.cfg.scheduler, warmup, span))
        self.policy, self.optimizer = self.strategy.prepare(self.policy, self.optimizer, self.cfg)  # DeepSpeed takes the update over
        self._params = self.master.masters if self.master is not None else [p for p in self.policy.parameters() if p.requires_grad]
        if self.resumed_from is not None:
            sharded = self.policy if self.strategy.sharded else None
            state = load_training_state(self.resumed_from, self.optimizer, self.scheduler, self.algorithm.extra_modules(), sharded)
            self.step = state["step"]
            self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
            say(f"resumed from {self.resumed_from} at step {self.step}", self.strategy.is_main)
        self.log = MetricsLog(self.run_dir, self.cfg.report_to, self.recipe.model_dump(mode="json"), enabled=self.strategy.is_main)
        if self.resumed_from is None and self.strategy.is_main and self.log.path.exists():
            self.log.path.unlink()  # a fresh run (or a resume that found no checkpoint) starts the metrics anew
        elif self.resumed_from is not None and (dropped := self.log.truncate_after(self.step)):
            say(f"metrics.jsonl: dropped {dropped} line(s) after step {self.step}, logged before the run was stopped", self.strategy.is_main)
        samples = self.run_dir / "samples.jsonl"  # online methods' sample completions (rl.log_samples)
        if self.strategy.is_main and samples.exists():
            if self.resumed_from is None:
                samples.unlink()
            else:
                truncate_jsonl(samples, self.step)

    def batch_layout(self, order: DataOrder | None, total: int) -> BatchLayout:
        """The sizes of one optimizer step of this fit (the start banner)."""
        cfg = self.cfg
        online = hasattr(self.algorithm, "rollout")
        return BatchLayout(
            examples=min(cfg.batch_size, order.size(0)) if order is not None else cfg.batch_size, processes=self.strategy.world,
            micro_batch_size=cfg.micro_batch_size, micro_batch_tokens=cfg.micro_batch_tokens, n_examples=order.n if order is not None else None,
            steps_per_epoch=order.per_epoch if order is not None else None, total_steps=total,
            unit=getattr(self.algorithm, "example_unit", "prompts" if online else "examples"),
            samples_per_example=self.algorithm.samples_per_example())

    def prepare(self, train_examples: list[dict] | None, eval_examples: list[dict] | None = None, steps: int | None = None
                ) -> tuple[Context, DataOrder | None, int, int]:
        """Set up a fit over ``train_examples``: the algorithm's ``setup`` (e.g. reference caches for the
        examples the fit will read), and on the first fit the wrapped module, optimizer and scheduler.
        Returns (context, data order, first local step, number of local steps)."""
        self.train_examples, self.eval_examples = train_examples, eval_examples
        order = None
        if train_examples is not None:
            check_layout(len(train_examples), self.cfg.batch_size, self.strategy.world, self.cfg.micro_batch_size)
            order = DataOrder(len(train_examples), self.cfg.batch_size, self.cfg.seed, self.algorithm.shuffle, self.strategy.world)
            if len(train_examples) < self.cfg.batch_size:
                say(f"warning: train.batch_size={self.cfg.batch_size} is more than the {len(train_examples)} training examples: "
                    f"the batch is capped to the data (each step trains on all {order.size(0)})", self.strategy.is_main)
        elif steps is None:
            raise ValueError("fit over a stream of batches needs steps")
        self.order = order
        total = steps or self.cfg.max_steps or max(1, math.ceil(self.cfg.epochs * order.per_epoch))
        first = self.policy is None
        start = 0
        if first and self.resumed_from is not None:
            start = read_state(self.resumed_from)["step"]
        if first and self.strategy.is_main:
            for line in batch_banner(self.batch_layout(order, total)):
                say(line)
        if first and self.master is not None:
            self.master.adopt(self.model)  # before the replica, the reference and the samplers copy it
        if first and (hasattr(self.algorithm, "rollout") or is_peft(self.model)):
            self.replica = self.strategy.replica(self.model)  # before wrapping, while the weights are whole
        ctx = self.context(order, start, total)
        warn_settings(self.recipe, self.model, self.tokenizer, first and self.strategy.is_main)  # tiny-model settings on a real model
        self.algorithm.setup(ctx)  # before wrapping: the policy is the plain model here
        if first:
            self._first_fit(total, start)
        return ctx, order, start, total

    def fit(self, train_examples: list[dict] | None = None, eval_examples: list[dict] | None = None, steps: int | None = None,
            stream: Iterator[list[list[dict]]] | None = None) -> dict[str, float]:
        """Training steps over ``train_examples`` (``steps``; default: ``train.max_steps`` or
        ``train.epochs`` of the data), evaluating on ``eval_examples``; returns the last logged record.
        Or, with ``stream``, ``steps`` steps whose batches the caller makes: each item of the stream is one
        step's optimizer updates, each a list of collated micro-batches (:meth:`collate`) of this process.
        Callable again: the model, optimizer, scheduler and step counter carry over."""
        ctx, order, start, total = self.prepare(train_examples, eval_examples, steps)
        began = time.perf_counter()
        try:
            return self._run(ctx, order, start, total, stream)
        finally:
            self.train_time += time.perf_counter() - began  # steps, evaluations and checkpoints of this fit

    def _updates(self, ctx: Context, order: DataOrder | None, local: int, stream) -> tuple[list[list[dict]], dict[str, float]]:
        """The optimizer updates of one step: from the stream, from the algorithm's rollout, or the
        step's examples split into micro-batches."""
        if stream is not None:
            return next(stream), {}
        indices = order.share(local, self.strategy.rank)
        examples = self.train_examples
        if hasattr(self.algorithm, "rollout"):
            self.policy.eval()
            steps, stats = self.algorithm.rollout(ctx, [examples[i] for i in indices])
            self.policy.train()
            return steps, self.strategy.mean(stats)
        return [self.micro_batches(examples, indices)], {}

    def _run(self, ctx: Context, order: DataOrder | None, start: int, total: int, stream=None) -> dict[str, float]:
        cfg, strategy, policy = self.cfg, self.strategy, self.policy
        offset = self.step - start  # global step = offset + local step
        per_epoch = order.per_epoch if order is not None else total
        eval_examples = self.eval_examples
        record: dict[str, float] = {}
        policy.train()
        if eval_examples and cfg.eval_every and start == 0:
            self.log.log({"step": offset, **self.evaluate(eval_examples, ctx)})  # the starting point of every eval curve
        online = hasattr(self.algorithm, "rollout") and stream is None
        if order is not None and start and not self.examples_seen:  # a resumed run counts the steps before its checkpoint
            self.examples_seen = sum(order.size(s) for s in range(start))
        progress = make_progress(cfg.progress and strategy.is_main)
        with progress, self.signals.watch():
            bar = progress.add_task(f"{self.algorithm.name} train", total=total, completed=start, info="")
            window_t, window_ex, window_tok = time.perf_counter(), 0, 0
            for local in range(start, total):
                ctx.step = self.step
                step_t = time.perf_counter()
                steps, rollout_stats = self._updates(ctx, order, local, stream)
                update_t = time.perf_counter()
                losses, metrics, grad_norm, lr = self.optimize(steps, ctx)
                loss = sum(losses) / len(losses) if losses else float("nan")
                batches = [b for update in steps[:1] for b in update]
                self.step += 1
                done = self.step
                self.algorithm.after_step(ctx, done)
                if online:  # per-phase wall time: the rollout's stages (from the algorithm) and the update
                    now = time.perf_counter()
                    rollout_stats = {**rollout_stats, "time/update": now - update_t, "time/step": now - step_t}
                    for name, value in rollout_stats.items():
                        if name.startswith("time/") and name != "time/step":
                            self.phase_time[name] = self.phase_time.get(name, 0.0) + value
                seen = order.size(local) if order is not None else cfg.batch_size
                self.examples_seen += seen
                window_ex += seen
                window_tok += int(sum(b["attention_mask"].sum().item() for b in batches)) * strategy.world
                progress.update(bar, completed=local + 1, info=self.algorithm.progress_info(loss, rollout_stats))
                if done % cfg.log_every == 0 or local + 1 == total:
                    elapsed = time.perf_counter() - window_t
                    record = {"step": done, "epoch": local / per_epoch, "lr": lr, "loss": loss, **rollout_stats, **metrics}
                    if grad_norm is not None:
                        record["grad_norm"] = grad_norm
                    if len(losses) > 1:
                        record["updates"] = len(losses)
                    if cfg.nonfinite == "skip":
                        record["nonfinite_skipped"] = self.nonfinite_skipped
                    record["processes"] = strategy.world
                    record["memory/train_state_mb"] = train_state_mb(self._params, self.optimizer)
                    record["examples_per_s"] = window_ex / elapsed
                    record["tokens_per_s"] = window_tok / elapsed
                    self.log.log(record)
                    window_t, window_ex, window_tok = time.perf_counter(), 0, 0
                if eval_examples and cfg.eval_every and (done % cfg.eval_every == 0 or local + 1 == total):
                    self.log.log({"step": done, **self.evaluate(eval_examples, ctx)})
                saved = cfg.save_every and done % cfg.save_every == 0 and local + 1 < total
                if saved:
                    self.save_checkpoint({"epoch": local / per_epoch})
                if self._stop_requested():
                    checkpoint = self.run_dir / f"checkpoint-{done}" if saved else self.save_checkpoint({"epoch": local / per_epoch})
                    raise Interrupted(f"stopped by {self.signals.name} after step {done} of {total}: wrote {checkpoint}; resume with `{Interrupted.RESUME}`",
                                      self.signals.signum or signal.SIGTERM)
        return record

    def _stop_requested(self) -> bool:
        """A signal reached this process or any other (every process stops after the same step)."""
        return self.signals.requested()

    def close(self) -> None:
        """Release the algorithm's resources, the trackers, the process group and the run folder's lock."""
        try:
            self.algorithm.close()
            if self.log is not None:
                self.log.close()
            self.strategy.close()
        finally:
            self.folder.release()

    def train(self) -> Path:
        """``alignkit train``: the recipe's data, resume, one fit, the final model; returns its folder."""
        try:
            train_examples = self.load_examples(self.recipe.data.train, "train")
            eval_examples = self.load_examples(self.recipe.data.eval, "eval")
            self.fit(train_examples, eval_examples)
            final = self.run_dir / "final"
            if self.cfg.save_final:
                self.save(final)
            if self.strategy.is_main:  # the one-screen summary, also as summary.json
                summary = self.summary(final if self.cfg.save_final else None)
                write_summary(self.run_dir, summary)
                for line in summary_lines(summary):
                    say(line)
        finally:
            self.close()
        return final
