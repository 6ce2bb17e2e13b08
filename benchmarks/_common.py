"""Shared set-up for benchmark scripts: the demo teacher, data, and writing results.

Every benchmark uses the demo's teacher preset and data, trained a little longer than the
demo's 10-minute budget allows (`BENCH_SETTINGS`; trained once, then loaded from the cache in
``$TFCOMPRESS_CACHE`` or ``~/.cache/tfcompress``), prints a markdown table and writes
``benchmarks/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.recipes import Run, validate
from tfcompress.recipes.runner import load_source

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class DemoSettings:
    """The demo's sizes (`tfcompress/recipes/examples/demo.yaml`); `quick` for checks."""

    corpus: str = "austen"
    teacher_preset: str = "teacher"
    student_preset: str = "student"
    seq_len: int = 128
    batch_size: int = 32
    teacher_steps: int = 400
    student_steps: int = 150
    finetune_steps: int = 50
    eval_windows: int = 128
    calibration_windows: int = 32
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(teacher_preset="test-tiny", student_preset="test-tiny", seq_len=32,
                   batch_size=8, teacher_steps=20, student_steps=10, finetune_steps=5,
                   eval_windows=16, calibration_windows=4)


# the settings every recorded result in results/ was measured with
BENCH_SETTINGS = DemoSettings(teacher_steps=500, student_steps=200, eval_windows=256)


class BenchContext(Run):
    """A recipe `Run` of the demo's teacher and data, with the benchmark's `DemoSettings`."""

    def __init__(self, settings: DemoSettings, run_dir: str | Path):
        s = settings
        super().__init__(validate({
            "model": {"preset": s.teacher_preset, "train_steps": s.teacher_steps,
                      "name": "teacher"},
            "data": {"corpus": s.corpus, "tokenizer": "byte", "seq_len": s.seq_len,
                     "batch_size": s.batch_size, "eval_windows": s.eval_windows,
                     "calibration_windows": s.calibration_windows},
            "stages": ["evaluate"], "output": str(run_dir), "seed": s.seed}))
        self.settings = settings
        self.run_dir = self.out

    @property
    def teacher(self):
        return self.model("teacher")


def demo_context(settings: DemoSettings | None = None, run_dir: str | None = None):
    """A `BenchContext` with the (cached) demo teacher loaded."""
    ctx = BenchContext(settings or BENCH_SETTINGS, run_dir or "runs/bench")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    load_source(ctx)
    return ctx


def write_results(name: str, table: str, data: dict, command: str) -> Path:
    """Print ``table`` and save it with ``data`` under ``benchmarks/results/``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}
    (RESULTS / f"{name}.json").write_text(json.dumps({**data, "meta": meta}, indent=2))
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n`{command}`\n\n{table}\n")
    print(table)
    print(f"results written to {RESULTS / (name + '.json')}")
    return RESULTS / f"{name}.json"
