"""Helpers shared by the side-by-side benchmarks."""

from __future__ import annotations

import threading
import time


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
