"""Peak resident memory of this process over a block, sampled every 0.2 s (standard library
only: the llm-compressor peer's interpreter imports it too).

Example:
    >>> with PeakRSS() as peak:
    ...     data = b"x" * 10**8
    >>> peak.gb > 0.1, peak.gb >= peak.start_gb
    (True, True)
"""

from __future__ import annotations

import threading
from pathlib import Path


class PeakRSS:
    """Highest VmRSS of this process while the block runs (everything the process already
    holds counts too); ``start_gb``: the reading it began from, so ``gb >= start_gb``."""

    def __enter__(self):
        self.start_gb = self._now()
        self.gb, self._stop = self.start_gb, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.gb = max(self.gb, self._now())  # a block shorter than one sample still counts

    def _watch(self):
        while not self._stop.wait(0.2):
            self.gb = max(self.gb, self._now())

    @staticmethod
    def _now() -> float:
        return current_gb()


def current_gb(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmHWM``: its peak so far), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1e6
    return 0.0
