"""Every benchmark script runs end to end at ``--quick`` size, so none can rot unnoticed.

Each runs in this process (TensorFlow is imported once) and must write its results, with the
command that reproduces them, under ``benchmarks/results/quick/``; the recorded results are
left alone.

Together they cost minutes on 2 busy cores, so `make test` runs only the cheapest
(`IN_MAKE_TEST`); the rest carry the ``bench_quick`` marker and run with ``make bench-quick``
(every script).
"""

import importlib
import json
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))
IN_MAKE_TEST = ("foundation", "generate", "llm")  # the cheapest at --quick size (~20-40 s each)


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory):
    """One teacher cache per test process (xdist workers never share one)."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.mark.slow
@pytest.mark.parametrize("script", [
    pytest.param(s, marks=() if s in IN_MAKE_TEST else pytest.mark.bench_quick) for s in SCRIPTS])
def test_benchmark_runs_quick(script, bench_cache, monkeypatch, capsys):
    if script == "llm":
        pytest.importorskip("gguf", reason="the llm benchmark needs the [llm] extra")
    monkeypatch.setenv("TFCOMPRESS_CACHE", str(bench_cache))
    recorded = {p: p.stat().st_mtime for p in (BENCHMARKS / "results").glob("*.json")}
    started = time.time()
    importlib.import_module(f"benchmarks.{script}").main(["--quick"])

    out = BENCHMARKS / "results" / "quick" / f"{script}.json"
    assert out.is_file() and out.stat().st_mtime >= started - 1
    meta = json.loads(out.read_text())["meta"]
    assert meta["command"] == f"python -m benchmarks.{script} --quick"
    assert {"python", "tensorflow", "keras", "numpy"} <= set(meta["versions"])
    assert f"`{meta['command']}`" in out.with_suffix(".md").read_text()
    assert "|---" in capsys.readouterr().out  # the table was printed
    assert {p: p.stat().st_mtime for p in recorded} == recorded  # real results untouched
    if script == "llm":
        assert json.loads(out.read_text())["failures"] == {}
