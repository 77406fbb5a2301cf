"""The batch-size vocabulary of a run, checked when the trainer starts and printed once (main process).

One training step reads ``train.batch_size`` *prompts* (online RL) or *examples* over all processes. Online
RL draws ``rl.sampling.group_size`` samples per prompt and turns the step's samples into
``rl.update.epochs x rl.update.mini_batches`` optimizer steps; every other method takes one optimizer step
per training step on its examples. So, with P processes and ``train.micro_batch_size`` m:

* samples per step        S = batch_size x samples per prompt
* global batch            G = S / mini_batches   (samples, or examples, per optimizer step, all processes)
* per device              G / P, in micro-batches of m rows per forward
* gradient accumulation   A = (G / P) / m        (forward/backward passes per optimizer step on one device)

so that ``G = P x m x A``. A *unit* (a prompt's group when the update shares its prompt, a pair for p3o and
copg) never spans micro-batches or optimizer steps, so online micro-batches hold whole units and the units
of a process split evenly into the mini-batches. Settings that cannot give this layout are refused with one
line naming the options; the data size (which can cap the batch) is checked later, when the fit starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.progress import say

__all__ = ["BatchPlan", "announce_batch_plan", "plan_batches"]


@dataclass(frozen=True)
class BatchPlan:
    """The sizes one training step is made of (see the module docstring for the arithmetic)."""

    unit: str  # what train.batch_size counts: "prompts" (online RL) or "examples"
    per_step: int  # train.batch_size, over all processes
    samples_per_prompt: int
    processes: int
    mini_batches: int  # optimizer steps per pass over a step's samples
    epochs: int  # passes over a step's samples
    micro_batch: int | None  # rows per forward on one device (None: the whole per-device batch, or length buckets)
    micro_batch_tokens: int | None
    unit_size: int = 1  # samples that must share a micro-batch (a group, a pair)

    @property
    def samples_per_step(self) -> int:
        return self.per_step * self.samples_per_prompt

    @property
    def global_batch(self) -> int:
        """Samples (or examples) per optimizer step, over all processes."""
        return self.samples_per_step // self.mini_batches

    @property
    def per_device(self) -> int:
        return self.global_batch // self.processes

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps per training step."""
        return self.epochs * self.mini_batches

    @property
    def accumulation(self) -> int | None:
        """Forward/backward passes per optimizer step on one device (None: length buckets decide)."""
        if self.micro_batch_tokens is not None:
            return None
        return self.per_device // (self.micro_batch or self.per_device)

    def line(self) -> str:
        """The one line printed at the start of a run."""
        micro = f"length buckets of <= {self.micro_batch_tokens} tokens" if self.micro_batch_tokens is not None else str(self.micro_batch or self.per_device)
        accumulation = "set by the buckets" if self.accumulation is None else str(self.accumulation)
        samples = "samples" if self.unit == "prompts" else self.unit
        return (f"batch vocabulary: {self.unit} per step {self.per_step}, samples per {self.unit[:-1]} {self.samples_per_prompt}, "
                f"processes {self.processes}, per-device micro-batch {micro}, gradient-accumulation steps {accumulation}, "
                f"global batch {self.global_batch} {samples} per optimizer step ({self.optimizer_steps} optimizer step"
                f"{'s' if self.optimizer_steps > 1 else ''} per training step)")


def plan_batches(recipe, processes: int) -> BatchPlan:
    """The batch layout of ``recipe`` on ``processes`` processes; a ``ValueError`` (one line naming the options)
    when the settings cannot give it."""
    t = recipe.train
    online = recipe.algorithm == "rl"
    unit = "prompts" if online else "examples"
    if t.batch_size % processes:
        raise ValueError(f"train.batch_size={t.batch_size} {unit} per step must be divisible by the number of processes ({processes})")
    if not online:
        plan = BatchPlan(unit, t.batch_size, 1, processes, 1, 1, t.micro_batch_size, t.micro_batch_tokens)
        if t.micro_batch_size is not None and plan.per_device % t.micro_batch_size:
            raise ValueError(f"train.micro_batch_size={t.micro_batch_size} must divide the {plan.per_device} examples each of the {processes} "
                             f"process(es) trains on per optimizer step (train.batch_size={t.batch_size} / processes)")
        return plan
    rl = recipe.rl
    group = rl.sampling.group_size
    if rl.update.share_prompts and rl.estimator != "ppo" and rl.env is None:
        unit_size, what = group, f"a prompt's rl.sampling.group_size={group} samples (rl.update.share_prompts packs them in one row)"
    elif rl.estimator in ("p3o", "copg"):
        unit_size, what = 2, f"a pair of samples (rl.estimator={rl.estimator})"
    else:
        unit_size, what = 1, "one sample"
    units = t.batch_size // processes * group // unit_size  # units each process splits into optimizer steps
    m = rl.update.mini_batches
    if units % m:
        raise ValueError(f"rl.update.mini_batches={m} must divide the {units} units each process splits into optimizer steps "
                         f"(train.batch_size={t.batch_size} / {processes} process(es) x rl.sampling.group_size={group}, a unit being {what})")
    plan = BatchPlan(unit, t.batch_size, group, processes, m, rl.update.epochs, t.micro_batch_size, t.micro_batch_tokens, unit_size)
    mb = t.micro_batch_size
    if mb is not None and t.micro_batch_tokens is None:
        if mb % unit_size:
            raise ValueError(f"train.micro_batch_size={mb} samples per forward must be a multiple of a unit, {what}, which never spans micro-batches")
        if plan.per_device % mb:
            raise ValueError(f"train.micro_batch_size={mb} must divide the {plan.per_device} samples each process trains on per optimizer step "
                             f"(train.batch_size={t.batch_size} x rl.sampling.group_size={group} / rl.update.mini_batches={m} / {processes} process(es))")
    return plan


def announce_batch_plan(recipe, strategy) -> BatchPlan:
    """Check ``recipe``'s batch sizes for ``strategy``'s processes and print the vocabulary line (main process)."""
    plan = plan_batches(recipe, strategy.world)
    say(plan.line(), strategy.is_main)
    return plan
