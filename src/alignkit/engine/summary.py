"""What a run says about itself: the batch-size vocabulary at the start, a one-screen summary at the end.

:func:`batch_banner` is the start banner (main process): examples per optimizer step over all processes,
per process, per forward (micro-batch) and the gradient-accumulation steps that makes; online methods say
prompts x group = completions; then steps per epoch (the last one partial, if so) and in all.

:func:`run_summary` is the end-of-training summary, computed from ``metrics.jsonl`` (first -> last loss and
the algorithm's key metrics, the last evaluation) and from what the trainer counted while it ran (steps,
examples seen, wall time, per-phase time of online methods). :func:`write_summary` stores it as
``<run>/summary.json`` and :func:`summary_lines` prints it (``docs/runs.md``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tracking import read_metrics


@dataclass(frozen=True)
class BatchLayout:
    """The sizes one optimizer step is made of (what the start banner prints)."""

    examples: int  # examples (prompts, pairs, ...) per optimizer step, over all processes
    processes: int
    micro_batch_size: int | None
    micro_batch_tokens: int | None
    n_examples: int | None  # training examples of the fit (None: the caller streams its batches)
    steps_per_epoch: int | None
    total_steps: int
    unit: str = "examples"  # what an example is called in the banner ("prompts" for online RL)
    samples_per_example: int = 1  # completions drawn per prompt (online RL)

    @property
    def per_process(self) -> int:
        return self.examples // self.processes

    @property
    def accumulation(self) -> int | None:
        """Forward/backward passes per optimizer step on one process (None: length buckets decide)."""
        if self.micro_batch_tokens is not None:
            return None
        size = self.micro_batch_size or self.per_process
        return max(1, -(-self.per_process // size))


def batch_banner(layout: BatchLayout) -> list[str]:
    """Two lines: what one optimizer step is, and how many steps the fit takes."""
    b = layout
    if b.samples_per_example > 1:
        step = f"{b.examples} {b.unit} x {b.samples_per_example} samples = {b.examples * b.samples_per_example} completions per step (global)"
        rows = "completions"
    else:
        step = f"{b.examples} {b.unit} per optimizer step (global)"
        rows = b.unit
    step += f"; {b.processes} process{'es' if b.processes > 1 else ''} x {b.per_process} {b.unit} each"
    if b.micro_batch_tokens is not None:
        step += f"; micro-batches: length buckets of <= {b.micro_batch_tokens} padded tokens per forward"
    elif b.samples_per_example > 1:
        step += f"; micro-batch: {b.micro_batch_size or 'all'} {rows} per forward"
    else:
        step += f"; micro-batch: {b.micro_batch_size or b.per_process} per forward -> {b.accumulation} gradient-accumulation step(s)"
    if b.n_examples is None or b.steps_per_epoch is None:
        steps = f"steps: {b.total_steps} (batches made by the caller)"
    else:
        last = b.n_examples - (b.steps_per_epoch - 1) * b.examples
        if b.steps_per_epoch == 1:
            shape = f"1 step of {last}"
        elif last == b.examples:
            shape = f"{b.steps_per_epoch} x {b.examples}"
        else:
            shape = f"{b.steps_per_epoch - 1} x {b.examples} + a last step of {last}"
        epochs = b.total_steps / b.steps_per_epoch
        plural = "" if b.total_steps == b.steps_per_epoch else "s"
        steps = f"steps: {b.steps_per_epoch} per epoch ({b.n_examples} {b.unit}: {shape}), {b.total_steps} in all ({epochs:.3g} epoch{plural})"
    return [f"batch: {step}", steps]


def _values(records: list[dict[str, Any]], name: str) -> list[float]:
    return [float(r[name]) for r in records if isinstance(r.get(name), (int, float)) and not isinstance(r.get(name), bool)]


def trends(records: list[dict[str, Any]], key_metrics: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """First and last logged value of the loss and of each key metric present in the training records."""
    train = [r for r in records if "loss" in r]
    out = {}
    for name in ("loss", *key_metrics):
        values = _values(train, name)
        if values:
            out[name] = {"first": values[0], "last": values[-1]}
    return out


def run_summary(run_dir: str | Path, *, algorithm: str, steps: int, examples_seen: int, wall_s: float, phase_s: dict[str, float],
                key_metrics: tuple[str, ...], final: Path | None) -> dict[str, Any]:
    """The end-of-training summary of ``run_dir`` (a JSON-able dict; see the module docstring)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    metrics = trends(records, key_metrics)
    summary: dict[str, Any] = {
        "algorithm": algorithm,
        "steps": steps,
        "examples_seen": examples_seen,
        "wall_time_s": round(wall_s, 3),
        "phase_time_s": {k: round(v, 3) for k, v in phase_s.items()},
        "metrics": metrics,
        "eval": {k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else {},
        "eval_step": evals[-1].get("step") if evals else None,
        "files": {"run": str(run_dir), "metrics": str(run_dir / "metrics.jsonl"), "summary": str(run_dir / "summary.json"),
                  "final": str(final) if final is not None else None},
        "next": [f"alignkit eval {run_dir}  # gold reward, KL, win rate; writes {run_dir / 'eval.json'} and {run_dir / 'report.html'}"],
    }
    if (run_dir / "samples.jsonl").exists():
        summary["files"]["samples"] = str(run_dir / "samples.jsonl")
    if final is not None:
        summary["next"].append(f"alignkit generate {final} -p 'Hello'  # samples from the trained model")
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as a few printable lines (one screen)."""
    s = summary
    lines = [f"done: {s['algorithm']}, {s['steps']} steps, {s['examples_seen']} examples seen, {s['wall_time_s']:.1f} s"]
    if s["phase_time_s"]:
        total = sum(s["phase_time_s"].values()) or 1.0
        lines.append("  time per phase: " + ", ".join(f"{k.removeprefix('time/')} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in s["phase_time_s"].items()))
    for name, v in s["metrics"].items():
        lines.append(f"  {name}: {v['first']:.4g} -> {v['last']:.4g}")
    if s["eval"]:
        lines.append(f"  eval (step {s['eval_step']}): " + ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in s["eval"].items() if isinstance(v, (int, float))))
    files = s["files"]
    lines.append(f"  final model: {files['final'] or '(not saved: train.save_final=false)'}")
    lines.append(f"  metrics: {files['metrics']}; summary: {files['summary']}" + (f"; samples: {files['samples']}" if "samples" in files else ""))
    lines += [f"  next: {command}" for command in s["next"]]
    return lines


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """``run_dir/summary.json``, written to a temporary file then renamed."""
    path = Path(run_dir) / "summary.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
