"""Progress bars and console lines for long work (training, generation, scoring, caching)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_progress(enabled: bool) -> Progress:
    """A rich progress display with a description, a bar, done/total, a free ``info`` field and timings;
    ``enabled=False`` (e.g. a non-main process) shows nothing."""
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


def say(message: str, enabled: bool = True) -> None:
    """One ``[alignkit] ...`` line on stdout (only where ``enabled``, e.g. on the main process)."""
    if enabled:
        print(f"[alignkit] {message}", flush=True)
