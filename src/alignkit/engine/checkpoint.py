"""Checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint folder ``checkpoint-<step>/`` holds

* ``model/``: the policy via ``save_pretrained`` (safetensors; a LoRA adapter for LoRA runs) + tokenizer,
* ``optimizer.pt`` and ``scheduler.pt``: their ``state_dict`` (tensors and plain numbers; read back with
  ``torch.load(weights_only=True)``, which refuses any other object),
* ``rng.safetensors``: the torch CPU (and CUDA) generator states,
* ``<name>.safetensors``: the state of an algorithm's extra trained modules (e.g. PPO's critic),
* ``state.json``: the step, epoch and the metrics' history needed to continue.

It is written into ``checkpoint-<step>.tmp`` and renamed when complete, so a run killed while saving
leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..models.loading import save_policy

_NAME = re.compile(r"^checkpoint-(\d+)$")


def save_checkpoint(
    run_dir: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict[str, Any], keep: int | None,
    extra: dict[str, torch.nn.Module] | None = None, full_states: tuple[dict, dict] | None = None,
) -> Path:
    """``full_states``: (model, optimizer) state dicts gathered from sharded (FSDP2) processes."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f"checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model_state, optimizer_state = full_states or (None, optimizer.state_dict())
    save_policy(model, tokenizer, tmp / "model", state_dict=model_state)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    for name, module in (extra or {}).items():
        save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep is not None:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint-*") if (m := _NAME.match(p.name)) and (p / "state.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_training_state(checkpoint: Path, optimizer, scheduler, extra: dict[str, torch.nn.Module] | None = None, sharded: torch.nn.Module | None = None) -> dict[str, Any]:
    """``sharded``: the FSDP2 module whose optimizer state is restored from the full (gathered) one."""
    for name, module in (extra or {}).items():
        module.load_state_dict(load_file(str(checkpoint / f"{name}.safetensors")))
    optimizer_state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    if sharded is None:
        optimizer.load_state_dict(optimizer_state)
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(sharded, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    rng = load_file(str(checkpoint / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((checkpoint / "state.json").read_text())
