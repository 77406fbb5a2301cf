"""What ``alignkit eval`` is pointed at: a run folder (its ``final/`` model, its starting model as the
default reference, its ``dpo.beta``) or a model folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvalTarget:
    """``model_dir``: the model to evaluate; ``run_dir``: the run it comes from (None for a model folder);
    ``reference``: the run's starting model (None for a model folder); ``beta``: the run's ``dpo.beta``
    (None when it is not a run folder or its config has none)."""

    model_dir: Path
    run_dir: Path | None = None
    reference: Path | None = None
    beta: float | None = None


def is_run_folder(path: Path) -> bool:
    return (path / "config.yaml").exists() and (path / "final").exists()


def resolve_target(path: str | Path) -> EvalTarget:
    """An :class:`EvalTarget` for a run folder (``config.yaml`` + ``final/``) or a model folder. The run's
    reference is its ``model.path``, or the ``initial-model/`` it saved (a tiny model built by the run)."""
    import yaml

    path = Path(path)
    if not is_run_folder(path):
        return EvalTarget(path)
    config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    start = (config.get("model") or {}).get("path") or str(path / "initial-model")
    beta = (config.get("dpo") or {}).get("beta")
    return EvalTarget(path / "final", path, Path(start), float(beta) if beta is not None else None)
