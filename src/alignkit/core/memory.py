"""Keep freed host memory in the process (glibc), so large tensors do not page-fault on every step.

glibc's ``malloc`` serves every block larger than its mmap threshold (at most 32 MiB when left to adjust
itself) with a fresh ``mmap`` and hands it back to the kernel on ``free``. A training step on CPU allocates
many such blocks: a [rows x vocabulary] chunk of logits (64 MiB), a tied embedding's gradient
(113 MiB fp32 for SmolLM2-135M), the fp32 master gradients. Each is zero-filled page by page on first touch
again at every step: an update of SmolLM2-135M took about 5 million minor page faults and 25% of its time
there (benchmarks/README.md, "Host allocator"). PyTorch's CPU allocator has no cache of its own; the usual
cure is to preload jemalloc or tcmalloc. :func:`retain_freed_memory` does the in-process equivalent with
``mallopt``: blocks up to 1 GiB come from the heap, and up to 2 GiB of free heap is kept instead of trimmed,
so the next step reuses pages that are already mapped. The resident size stays near the peak instead of
dropping between steps; the peak itself does not grow.

It is a no-op off glibc, when the user chose an allocator (``LD_PRELOAD`` of jemalloc/tcmalloc, or glibc's own
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``GLIBC_TUNABLES``), and with
``ALIGNKIT_SYSTEM_MALLOC=1``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # keep up to 2 GiB of free heap (mallopt takes an int)

_state: dict[str, bool] = {}


def user_chose_allocator(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment already picks the allocator or its thresholds (then alignkit leaves it)."""
    env = os.environ if environ is None else environ
    if env.get("ALIGNKIT_SYSTEM_MALLOC", "") not in ("", "0"):
        return True
    if any(name in env.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return True
    return any(key in env for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"))


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process (see the module docstring); True when set."""
    if "set" in _state:
        return _state["set"]
    _state["set"] = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_chose_allocator():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD)) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD)) == 1 and ok
    except (OSError, AttributeError):
        return False
    _state["set"] = ok
    return ok
