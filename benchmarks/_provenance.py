"""Where a result comes from: the commit, the benchmark script's hash and the machine's load.

Standard library only. `provenance` is taken once when a benchmark starts; `LoadMonitor`
measures the load it ran under (never typed by hand): the 1-minute load average at the start
and at each write, and the share of the machine's CPU time that other processes used.

Example:
    >>> monitor = LoadMonitor()
    >>> meta = provenance("llm")  # {"commit": ..., "dirty": [...], "script_sha256": ...}
    >>> monitor.snapshot()["others_cpu_share"]  # 0.0 .. 1.0
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# results files change while a benchmark writes them; they are not the code that made them
NOT_CODE = ("benchmarks/results/",)


def script_sha256(script: str, root: Path = ROOT) -> str:
    """The sha256 of ``benchmarks/<script>.py``: a result is stale once its script changes
    (only its own script, so an unrelated commit leaves every result valid)."""
    return hashlib.sha256((root / "benchmarks" / f"{script}.py").read_bytes()).hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path = ROOT) -> dict:
    """``{"commit": HEAD or None, "dirty": [paths with uncommitted changes]}`` (results files
    excluded: a run writes them)."""
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    dirty = sorted(line[3:] for line in status.splitlines()
                   if line[3:] and not line[3:].startswith(NOT_CODE))
    return {"commit": commit.strip() if commit else None, "dirty": dirty}


def provenance(script: str, root: Path = ROOT) -> dict:
    """The commit, its uncommitted changes and the script's hash, for a result's ``meta``."""
    return {**git_state(root), "script": f"benchmarks/{script}.py",
            "script_sha256": script_sha256(script, root)}


def others_cpu_share(busy_s: float, own_s: float, wall_s: float, cores: int) -> float:
    """The share of the machine's CPU time (``wall_s * cores``) that processes other than this
    one (and its children) kept busy: ``(busy_s - own_s) / (wall_s * cores)`` in [0, 1].

    >>> others_cpu_share(busy_s=30.0, own_s=10.0, wall_s=20.0, cores=2)
    0.5
    """
    if wall_s <= 0 or cores <= 0:
        return 0.0
    return min(1.0, max(0.0, (busy_s - own_s) / (wall_s * cores)))


def _busy_seconds() -> float | None:
    """CPU seconds all processes spent busy since boot (``/proc/stat``; None elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


class LoadMonitor:
    """The machine's load from its creation until each `snapshot` (measured, never typed)."""

    def __init__(self):
        self.start_wall, self.start_busy = time.monotonic(), _busy_seconds()
        self.start_own, self.start_load = _own_seconds(), os.getloadavg()

    def snapshot(self) -> dict:
        """Load averages at the start and now, and other processes' CPU share in between."""
        wall = time.monotonic() - self.start_wall
        busy = _busy_seconds()
        cores = os.cpu_count() or 1
        share = None  # unknown off Linux, and noise under a second of clock ticks
        if busy is not None and self.start_busy is not None and wall >= 1:
            share = round(others_cpu_share(busy - self.start_busy,
                                           _own_seconds() - self.start_own, wall, cores), 3)
        return {"cores": cores, "wall_s": round(wall, 1),
                "loadavg_start": [round(x, 2) for x in self.start_load],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "others_cpu_share": share}


def describe_load(load: dict | None) -> str:
    """One line for a `LoadMonitor.snapshot`, as results tables show it.

    >>> describe_load({"cores": 2, "loadavg_start": [1.0, 1, 1], "loadavg_end": [3.5, 2, 1],
    ...            "others_cpu_share": 0.25})
    'load average 1.0 -> 3.5 on 2 cores, other processes 25% of the CPU'
    """
    load = load or {}
    if not (load.get("loadavg_start") and load.get("loadavg_end")):
        return "load not recorded"
    share = load.get("others_cpu_share")
    return (f"load average {load['loadavg_start'][0]} -> {load['loadavg_end'][0]} on "
            f"{load['cores']} cores, other processes "
            + ("not measured" if share is None else f"{share:.0%} of the CPU"))
