"""Checkpoints and every other saved folder: written atomically, checked before they are read back.

A checkpoint folder ``checkpoint-<step>/`` holds

* ``model/``: the policy via ``save_pretrained`` (safetensors; a LoRA adapter for LoRA runs) + tokenizer,
* ``optimizer.pt`` and ``scheduler.pt``: their ``state_dict`` (tensors and plain numbers; read back with
  ``torch.load(weights_only=True)``, which refuses any other object),
* ``rng.safetensors``: the torch CPU (and CUDA) generator states,
* ``<name>.safetensors``: the state of an algorithm's extra trained modules (e.g. PPO's critic),
* ``state.json``: the step, epoch, counters needed to continue, and ``files``: the size of every other
  file of the folder (a truncated or missing file is found before anything is loaded).

Every folder a run saves (checkpoints, ``final/``, ``final-merged/``) goes through :func:`atomic_folder`:
it is written into ``<name>.tmp``, every file is fsynced, and the folder is renamed to its name; an older
folder of that name is renamed away first and then deleted, and so are pruned checkpoints
(``<name>.deleting``). A folder with the final name is therefore complete; a kill leaves only ``.tmp`` /
``.deleting`` folders, which resume reports and removes. :func:`find_resumable` picks the newest checkpoint
that passes :func:`checkpoint_problem` and names the ones it skips (older checkpoints without ``files``
are checked for the files they must hold).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from ..core.files import fsync_dir, fsync_tree
from ..models.loading import save_policy

_NAME = re.compile(r"^checkpoint-(\d+)$")
_LEFTOVER = re.compile(r"^(checkpoint-\d+|final|final-merged)\.(tmp|deleting|old)$")
BROKEN_SUFFIX = ".incomplete"


class RunError(RuntimeError):
    """A run that cannot go on (disk full, a folder owned by another run, a signal, non-finite values).

    The message is one line for the user; ``exit_code`` is the command's exit status."""

    exit_code = 2


class DiskFullError(RunError):
    """No space left while writing a saved folder; earlier folders are intact."""


# --------------------------------------------------------------------------------------------------
# atomic folders
# --------------------------------------------------------------------------------------------------
def remove_folder(folder: Path) -> None:
    """Delete ``folder`` by renaming it to ``<name>.deleting`` first: a kill meanwhile leaves no
    half-deleted folder under a name that looks complete."""
    if not folder.exists():
        return
    doomed = folder.with_name(folder.name + ".deleting")
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    folder.rename(doomed)
    fsync_dir(folder.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC anywhere in the chain, or a writer's message for it (torch and safetensors wrap it)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        text = str(e)
        if "No space left on device" in text or "StorageFull" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def _low_on_space(folder: Path, margin: int = 16 * 2**20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


@contextlib.contextmanager
def atomic_folder(final: Path, describe: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to write into; on success fsync it and rename it to
    ``final`` (replacing an older one), on failure remove it. Disk full raises :class:`DiskFullError`
    naming the folder (``describe`` adds what is still complete)."""
    final = Path(final)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        yield tmp
        fsync_tree(tmp)
    except BaseException as e:
        full = isinstance(e, Exception) and (is_disk_full(e) or (_low_on_space(parent) and isinstance(e, (OSError, RuntimeError))))
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            where = f"; {describe}" if describe else ""
            raise DiskFullError(f"no space left on {_mount_of(parent)} while writing {final.name} in {parent}{where}") from e
        raise
    if final.exists():
        remove_folder(final)
    tmp.rename(final)
    fsync_dir(parent)


def _mount_of(path: Path) -> str:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict[str, Any], keep: int | None,
    extra: dict[str, torch.nn.Module] | None = None, full_states: tuple[dict, dict] | None = None,
) -> Path:
    """``full_states``: (model, optimizer) state dicts gathered from sharded (FSDP2) processes."""
    final = run_dir / f"checkpoint-{step}"
    last = latest_checkpoint(run_dir)
    describe = f"{last.name} is the last complete one" if last is not None and last != final else "no complete checkpoint was written before it"
    with atomic_folder(final, describe) as tmp:
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
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / "state.json").write_text(json.dumps({"step": step, **state, "files": files}, indent=1))
    if keep is not None:
        for old in list_checkpoints(run_dir)[:-keep]:
            remove_folder(old)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders by step (named ``checkpoint-<step>`` and holding a ``state.json``)."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*") if (m := _NAME.match(p.name)) and (p / "state.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "empty or truncated"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"truncated ({size} bytes, header alone needs {n + 8})"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"unreadable header ({e})"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    needed = 8 + n + max(ends, default=0)
    if size < needed:
        return f"truncated ({size} of {needed} bytes)"
    return None


def _torch_file_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return f"truncated or corrupt ({e})"
    return None


def model_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete ``save_pretrained`` model folder (config, weights headers), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return "missing"
    config = folder / "config.json" if (folder / "config.json").exists() else folder / "adapter_config.json"
    if not config.exists():
        return "no config.json"
    for p in [config, *sorted(folder.glob("tokenizer*.json"))]:
        try:
            json.loads(p.read_text())
        except (ValueError, OSError) as e:
            return f"{p.name} is not valid JSON ({e})"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no safetensors weights"
    for p in weights:
        if problem := _safetensors_problem(p):
            return f"{p.name}: {problem}"
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (missing, truncated or unreadable files), or None."""
    checkpoint = Path(checkpoint)
    state_path = checkpoint / "state.json"
    if not state_path.exists():
        return "no state.json (its save did not finish)"
    try:
        state = json.loads(state_path.read_text())
        int(state["step"])
    except (ValueError, KeyError, TypeError, OSError) as e:
        return f"state.json is not a valid checkpoint state ({type(e).__name__}: {e})"
    files = state.get("files")
    if isinstance(files, dict):
        for rel, size in files.items():
            p = checkpoint / rel
            if not p.is_file():
                return f"{rel} is missing"
            if p.stat().st_size != size:
                return f"{rel} is truncated or changed ({p.stat().st_size} bytes; {size} were written)"
    else:  # written before checkpoints listed their files
        model = checkpoint / "model"
        if not ((model / "config.json").exists() or (model / "adapter_config.json").exists()):
            return "model/ has no config.json"
        for rel in ("optimizer.pt", "scheduler.pt", "rng.safetensors"):
            if not (checkpoint / rel).is_file():
                return f"{rel} is missing"
        if not any(model.glob("*.safetensors")):
            return "model/ has no safetensors weights"
    for p in sorted(checkpoint.rglob("*.safetensors")):
        if problem := _safetensors_problem(p):
            return f"{p.relative_to(checkpoint).as_posix()}: {problem}"
    for p in sorted(checkpoint.glob("*.pt")):
        if problem := _torch_file_problem(p):
            return f"{p.relative_to(checkpoint).as_posix()}: {problem}"
    for p in sorted(checkpoint.rglob("*.json")):
        try:
            json.loads(p.read_text())
        except (ValueError, OSError) as e:
            return f"{p.relative_to(checkpoint).as_posix()} is not valid JSON ({e})"
    return None


def find_resumable(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint of ``run_dir`` that can be resumed from, and the (folder, reason) of every
    newer ``checkpoint-*`` folder that cannot (incomplete or corrupt), newest first."""
    named = sorted(((int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and (m := _NAME.match(p.name))), reverse=True)
    skipped: list[tuple[Path, str]] = []
    for _, path in named:
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def leftovers(run_dir: Path) -> list[Path]:
    """Temporary folders of saves or deletions that did not finish (``*.tmp``, ``*.deleting``, ``*.old``)."""
    return sorted(p for p in Path(run_dir).iterdir() if _LEFTOVER.match(p.name)) if Path(run_dir).is_dir() else []


def set_aside(checkpoint: Path) -> Path:
    """Rename a checkpoint that cannot be resumed to ``<name>.incomplete`` (kept for inspection, no
    longer counted as a checkpoint)."""
    target = checkpoint.with_name(checkpoint.name + BROKEN_SUFFIX)
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    checkpoint.rename(target)
    return target


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(checkpoint) / "state.json").read_text())
    except (ValueError, OSError) as e:
        raise RunError(f"{checkpoint}: state.json cannot be read ({e})") from None


def load_training_state(checkpoint: Path, optimizer, scheduler, extra: dict[str, torch.nn.Module] | None = None, sharded: torch.nn.Module | None = None) -> dict[str, Any]:
    """``sharded``: the FSDP2 module whose optimizer state is restored from the full (gathered) one."""
    try:
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
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise RunError(f"checkpoint {checkpoint} cannot be loaded: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return read_state(checkpoint)


# --------------------------------------------------------------------------------------------------
# the run folder: one owner at a time
# --------------------------------------------------------------------------------------------------
LOCK_NAME = "run.lock"
_HELD: dict[str, list] = {}  # resolved lock path -> [file object, holders in this process]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _lock_holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (ValueError, OSError):
        return {}


def acquire_run_lock(run_dir: Path) -> tuple[Path, str | None]:
    """Take ``run_dir/run.lock`` for this process (an ``flock``, released when the process ends, so a
    killed run leaves no lock that still holds). Another live process holding it raises
    :class:`RunError` naming its pid; a lock file left by a dead process is taken over. Taking it again
    in the same process is allowed (counted). Returns (lock path, a note about a taken-over lock)."""
    path = Path(run_dir) / LOCK_NAME
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return path, None
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the lock file only records the holder
        fcntl = None
    f = open(path, "a+")
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            holder = _lock_holder(path)
            pid = holder.get("pid", "unknown")
            raise RunError(f"{run_dir} is in use by another run (pid {pid}, since {holder.get('started', '?')}; lock {path}): wait for it to finish, "
                           "stop it, or choose another train.output_dir") from None
    previous = _lock_holder(path)
    note = None
    pid = previous.get("pid")
    if isinstance(pid, int) and pid != os.getpid():
        note = f"took over the lock {path} of pid {pid}, which is no longer running"
        if fcntl is None and _pid_alive(pid):
            f.close()
            raise RunError(f"{run_dir} is in use by another run (pid {pid}; lock {path}): wait for it to finish, stop it, or choose another train.output_dir")
    import socket
    import time

    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    f.flush()
    _HELD[key] = [f, 1]
    return path, note


def release_run_lock(run_dir: Path) -> None:
    """Give back one hold of this process on ``run_dir``'s lock; the last one empties and unlocks it."""
    path = Path(run_dir) / LOCK_NAME
    key = str(path.resolve()) if path.exists() else None
    held = _HELD.get(key) if key else None
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    f = held[0]
    try:
        f.seek(0)
        f.truncate()
        f.flush()
    except OSError:
        pass
    f.close()  # closing the file releases the flock
    del _HELD[key]


RUN_CONTENTS = ("metrics.jsonl", "final", "final-merged")


def previous_run(run_dir: Path) -> list[str]:
    """What in ``run_dir`` belongs to an earlier run: checkpoints, metrics, final models."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = sorted(p.name for p in run_dir.glob("checkpoint-*") if p.is_dir())
    for name in RUN_CONTENTS:
        p = run_dir / name
        if p.exists() and not (p.is_file() and p.stat().st_size == 0):
            found.append(name)
    return found


def clear_run(run_dir: Path) -> list[str]:
    """Remove an earlier run's checkpoints, metrics, final models, starting tiny model and skip reports
    (``train.overwrite``); returns what was removed."""
    run_dir = Path(run_dir)
    removed = previous_run(run_dir)
    extra = ["initial-model", "tensorboard", "samples.jsonl", "summary.json"]
    targets = [run_dir / name for name in removed] + [run_dir / name for name in extra] + [*run_dir.glob("skipped-*.txt"), *leftovers(run_dir)]
    for p in targets:
        if p.is_dir():
            remove_folder(p)
        elif p.exists():
            p.unlink()
    return removed
