"""A run's folder and its stop signals: what the trainer holds outside the optimizer steps (``docs/runs.md``).

:class:`RunFolder` is the main process's claim on ``train.output_dir``: a lock while a trainer holds it,
leftovers of unfinished saves removed, another run's folder refused (or cleared with ``train.overwrite``),
the recipe written as ``config.yaml``; and the checkpoint a resume starts from (newer unreadable ones named
and set aside). :class:`StopSignals` turns SIGTERM/SIGINT into "stop after this step", agreed by every process.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
from pathlib import Path
from typing import Callable

import torch

from ..config import Recipe, dump_recipe
from ..core.progress import say
from .checkpoint import (
    RunError,
    acquire_run_lock,
    checkpoint_problem,
    clear_run,
    find_resumable,
    leftovers,
    previous_run,
    release_run_lock,
    set_aside,
)
from .strategies import Strategy


class RunFolder:
    """``train.output_dir`` as one run's property while a trainer holds it."""

    def __init__(self, recipe: Recipe, strategy: Strategy):
        self.recipe = recipe
        self.path = recipe.output_dir
        self.strategy = strategy
        self.locked = False

    def claim(self) -> None:
        """Main process: lock the folder, clear leftovers of unfinished saves, refuse (or with
        ``train.overwrite`` clear) another run's folder, write config.yaml."""
        path, cfg = self.path, self.recipe.train
        path.mkdir(parents=True, exist_ok=True)
        _, note = acquire_run_lock(path)
        self.locked = True
        try:
            if note:
                say(note)
            for leftover in leftovers(path):
                say(f"removing {leftover}: a save or deletion that did not finish")
                shutil.rmtree(leftover, ignore_errors=True)
            if cfg.resume is False or cfg.resume is None:
                earlier = previous_run(path)
                if earlier and not cfg.overwrite:
                    raise RunError(f"{path} holds another run ({', '.join(earlier)}): continue it with train.resume=true, "
                                   "choose another train.output_dir, or replace it with train.overwrite=true")
                if earlier:
                    say(f"train.overwrite: removed the earlier run's {', '.join(clear_run(path))} from {path}")
            dump_recipe(self.recipe, path / "config.yaml")
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self.locked:
            release_run_lock(self.path)
            self.locked = False

    def resume_point(self) -> Path | None:
        """The checkpoint ``train.resume`` starts from (None: from scratch). Every process calls it."""
        resume = self.recipe.train.resume
        if resume is False or resume is None:
            return None
        main = self.strategy.is_main
        if resume is True:
            if main:  # newer checkpoints that cannot be read are named and set aside (before the others look)
                found, skipped = find_resumable(self.path)
                for folder, why in skipped:
                    moved = set_aside(folder)
                    say(f"resume: {folder.name} is incomplete or corrupt ({why}); set aside as {moved.name}")
                if skipped and found is not None:
                    say(f"resume: falling back to {found.name}, the latest complete checkpoint")
            self.strategy.barrier()
            if not main:
                found, _ = find_resumable(self.path)
            if found is None:
                say(f"resume: no complete checkpoint in {self.path}, starting from scratch", main)
            return found
        folder = Path(resume)
        if not (folder / "state.json").exists():
            raise FileNotFoundError(f"train.resume: {folder} is not a checkpoint folder (no state.json)")
        if problem := checkpoint_problem(folder):
            raise RunError(f"train.resume: {folder} cannot be resumed from: {problem}")
        return folder


class StopSignals:
    """SIGTERM and SIGINT while steps run: stop after the current step (a second one of the same kind
    stops at once). ``next_step()`` names the step being finished in the message."""

    def __init__(self, strategy: Strategy, next_step: Callable[[], int]):
        self.strategy = strategy
        self.next_step = next_step
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name

    @contextlib.contextmanager
    def watch(self):
        """Install the handlers for the duration (only the main thread can; elsewhere nothing changes)."""
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum, frame):
            if self.signum is not None:  # asked twice: the previous behaviour, now
                signal.signal(signum, previous[signum] if previous[signum] is not None else signal.SIG_DFL)
                signal.raise_signal(signum)
                return
            self.signum = signum
            say(f"{signal.Signals(signum).name}: finishing step {self.next_step()}, then writing a checkpoint (send it again to stop at once)",
                self.strategy.is_main)

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def requested(self) -> bool:
        """A signal reached this process or any other (every process stops after the same step)."""
        if self.strategy.world == 1:
            return self.signum is not None
        flag = torch.tensor([float(self.signum or 0)], device=self.strategy.device)
        signum = int(self.strategy.sum(flag).item())
        if signum and self.signum is None:
            self.signum = signal.SIGTERM
        return signum > 0
