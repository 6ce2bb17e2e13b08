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
from pathlib import Path

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.pipeline import DemoContext, DemoSettings, load_corpus, train_teacher

RESULTS = Path(__file__).parent / "results"
# the settings every recorded result in results/ was measured with
BENCH_SETTINGS = DemoSettings(teacher_steps=500, student_steps=200, eval_windows=256)


def demo_context(settings: DemoSettings | None = None, run_dir: str | None = None) -> DemoContext:
    """A demo context with the (cached) demo teacher loaded."""
    settings = settings or BENCH_SETTINGS
    ctx = DemoContext(settings, Path(run_dir or "runs/bench"), load_corpus(settings.corpus))
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    train_teacher(ctx)
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
