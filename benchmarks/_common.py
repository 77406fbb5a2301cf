"""Helpers shared by the side-by-side benchmarks."""

from __future__ import annotations

import threading
import time


def matmul_flops(size: int = 1024, seconds: float = 2.0, dtype: str = "fp32") -> float:
    """The machine's matmul rate (FLOP/s) in ``dtype`` (fp32 | bf16 | bf16_params, the last two both bf16
    matmuls): a size^3 product repeated for ``seconds``."""
    import torch

    kind = torch.bfloat16 if dtype.startswith("bf16") else torch.float32
    x, y = torch.randn(size, size, dtype=kind), torch.randn(size, size, dtype=kind)
    for _ in range(3):
        x @ y
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x @ y
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start)


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """The machine's memory bandwidth (bytes/s): ``dst.copy_(src)`` of a ``megabytes`` buffer (far larger than
    any cache), best of ``repeats``, counting the bytes read and the bytes written."""
    import torch

    n = megabytes * 2**20 // 4
    src, dst = torch.randn(n), torch.empty(n)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * n * 4 / best


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak - base`` is the growth during the block."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.proc, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, False

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop = True
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def review_context(task, n_reviews: int, rng) -> str:
    """``n_reviews`` complete reviews of the sentiment task, to put before a prompt (longer prompts)."""
    reviews = [other + task.sample_completion(other, rng) for other in task.prompts(n_reviews, f"ctx-{rng.random()}")]
    return " ".join(reviews)
