"""Where metrics go: ``metrics.jsonl`` in the run folder always; TensorBoard, W&B, MLflow on request.

Each step appears once in ``metrics.jsonl``: a resumed run first drops the lines after its checkpoint's step
(:meth:`MetricsLog.truncate_after`), which the interrupted run had logged before it was stopped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from alignkit.core.registry import Registry


class MetricsLog:
    """Appends one JSON object per logged step to ``run_dir/metrics.jsonl`` and fans out to trackers."""

    def __init__(self, run_dir: Path, report_to: list[str], config: dict[str, Any], enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.trackers: list[Any] = []
        if not enabled:
            return
        for name in report_to:
            self.trackers.append(_open_tracker(name, run_dir, config))

    def truncate_after(self, step: int) -> int:
        """Drop the records of steps after ``step`` (a resumed run logs them again) and any line a kill
        left half-written; returns how many lines were dropped. The file is replaced atomically."""
        if not self.enabled:
            return 0
        return truncate_jsonl(self.path, step)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        step = int(record.get("step", 0))
        numbers = {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for tracker in self.trackers:
            tracker(numbers, step)

    def close(self) -> None:
        for tracker in self.trackers:
            getattr(tracker, "close", lambda: None)()


def truncate_jsonl(path: Path, step: int) -> int:
    """Drop the lines of ``path`` (JSON objects with a ``step``) after ``step``, and lines that do not parse;
    returns how many were dropped. The file is replaced atomically (``metrics.jsonl``, ``samples.jsonl``)."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and float(record.get("step", 0)) <= step
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to ``path`` as JSON Lines (non-finite floats become null)."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            f.write(json.dumps(clean) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


Tracker = Callable[[dict[str, float], int], None]
TRACKERS: Registry[Callable[[Path, dict[str, Any]], Tracker]] = Registry("tracker")


def _open_tracker(name: str, run_dir: Path, config: dict[str, Any]) -> Tracker:
    opener = TRACKERS.get(name)
    try:
        return opener(run_dir, config)
    except ImportError as e:
        raise ImportError(f"train.report_to includes '{name}' but it is not installed ({e}); pip install 'alignkit[trackers]'") from None


@TRACKERS.register("tensorboard")
def _tensorboard(run_dir: Path, config: dict[str, Any]) -> Tracker:
    """Event files in ``<run>/tensorboard`` (``tensorboard --logdir runs``)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(numbers: dict[str, float], step: int) -> None:
        for k, v in numbers.items():
            writer.add_scalar(k, v, step)

    log.close = writer.close  # type: ignore[attr-defined]
    return log


@TRACKERS.register("wandb")
def _wandb(run_dir: Path, config: dict[str, Any]) -> Tracker:
    """A W&B run named after the run folder, its files under ``<run>/wandb``; ``WANDB_MODE=offline`` keeps it
    local (``wandb sync`` uploads it later), ``WANDB_PROJECT`` and the other ``WANDB_*`` variables apply."""
    import wandb

    run = wandb.init(dir=str(run_dir), config=config, name=run_dir.name)

    def log(numbers: dict[str, float], step: int) -> None:
        run.log(numbers, step=step)

    log.close = run.finish  # type: ignore[attr-defined]
    return log


@TRACKERS.register("mlflow")
def _mlflow(run_dir: Path, config: dict[str, Any]) -> Tracker:
    """An MLflow run named after the run folder, in the store ``MLFLOW_TRACKING_URI`` names (a server, or a local
    store such as ``file:./mlruns``); the recipe as flattened parameters; ``/`` in metric names becomes ``_``."""
    import mlflow

    mlflow.start_run(run_name=run_dir.name)
    mlflow.log_params({k: str(v)[:250] for k, v in _flatten(config).items()})

    def log(numbers: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k.replace("/", "_"): v for k, v in numbers.items()}, step=step)

    log.close = mlflow.end_run  # type: ignore[attr-defined]
    return log


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
