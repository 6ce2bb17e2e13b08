"""Measure a ``.tflite`` file the way a phone would run it: size, batch-1 latency at several
thread counts, peak memory of a fresh interpreter process, and its operators.

Example:
    >>> m = measure_tflite("model.tflite", threads=(1, 2))
    >>> m["latency_ms_by_threads"], m["peak_memory"]["interpreter_mb"]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tfcompress.core.files import file_sizes
from tfcompress.core.latency import interleaved_latency
from tfcompress.errors import TfcompressError
from tfcompress.export.ops import inspect_tflite
from tfcompress.export.runner import TFLiteRunner

_PROBE = Path(__file__).with_name("_memprobe.py")


def peak_memory(path: str | Path, num_threads: int = 1, invokes: int = 3) -> dict:
    """Peak RSS (MB) of a new process that loads ``path``, allocates and invokes it.

    ``baseline_mb`` is the process after importing ``ai_edge_litert`` and numpy; the
    interpreter's own share is ``interpreter_mb = peak_mb - baseline_mb``.
    """
    done = subprocess.run(
        [sys.executable, str(_PROBE), str(path), str(num_threads), str(invokes)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    if done.returncode:
        raise RuntimeError(f"memory probe failed on {path}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_tflite(
    path: str | Path,
    threads: tuple[int, ...] = (1, 2),
    repeats: int = 10,
    memory: bool = True,
) -> dict:
    """Sizes, batch-1 latency per ``threads`` setting, peak memory and operator inventory."""
    path = Path(path)
    if not path.is_file():
        raise TfcompressError(f"path {str(path)!r} is not a file")
    if any(t < 1 for t in threads):
        raise TfcompressError(f"threads must be positive integers, got {threads}")
    runners = {t: TFLiteRunner(path, num_threads=t) for t in threads}
    x = runners[threads[0]].sample_input(1) if threads else None
    latency = interleaved_latency(
        {str(t): (lambda r=r: r.predict(x)) for t, r in runners.items()},
        rounds=max(repeats // 2, 1), repeats=2) if threads else {}
    result = {**file_sizes(path), **inspect_tflite(path),
              "latency_ms_by_threads": {t: v["median_ms"] for t, v in latency.items()}}
    if memory:
        result["peak_memory"] = peak_memory(path, threads[0] if threads else 1)
    return result
