"""Every benchmark script runs end to end at ``--quick`` size, so none can rot unnoticed.

Each runs in this process (TensorFlow is imported once) and must write its results, with the
command that reproduces them, under ``benchmarks/results/quick/``; the recorded results are
left alone. They share one xdist worker (one teacher trained, TensorFlow warmed once): under
three minutes together on 2 shared cores.
"""

import importlib
import json
import time
from pathlib import Path

import pytest
import tensorflow as tf

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory):
    """One teacher cache per test process (xdist workers never share one)."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture
def graph_mode_after():
    """``--quick`` runs TensorFlow eagerly for the rest of the process; later tests must not."""
    yield
    tf.config.run_functions_eagerly(False)


@pytest.mark.slow
@pytest.mark.xdist_group("benchmarks")
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_quick(script, bench_cache, graph_mode_after, monkeypatch, capsys):
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


def test_distill_summary_keys_per_regime():
    """The issue's keys: KD vs labels-only and vs Keras per regime, mean and spread over
    seeds; the gap closed with little data, None when labels come within 2 % of the teacher."""
    from benchmarks.distill import gap_closed, summarise

    little = {"teacher_ppl": 8.0, "settings": {"steps": 400},
              "seeds": {"0": {"labels": 12.0, "kd": 10.0, "keras_kd": 11.0},
                        "1": {"labels": 12.0, "kd": 11.0, "keras_kd": 11.0}}}
    data, table = summarise({"regimes": {"little": little}})
    assert data["default_kd_vs_labels"]["little"] == pytest.approx((10 / 12 + 11 / 12) / 2 - 1)
    assert data["spread"]["default_kd_vs_labels"]["little"] == pytest.approx(
        (1 / 12) / 2 ** 0.5)
    assert data["default_vs_keras"]["little"] == pytest.approx((10 / 11 + 1) / 2 - 1)
    assert data["gap_closed_little_data"] == pytest.approx((0.5 + 0.25) / 2)
    assert data["seeds"] == {"little": 2}
    assert "| little (400 steps) | 2 | 8.000 | 12.000 | 10.500 | 11.000 | -12.5% ±" in table
    close = {"teacher_ppl": 8.0, "seeds": {"0": {"labels": 8.1, "kd": 8.0}}}
    assert gap_closed(close) is None
    one, _ = summarise({"regimes": {"long": {"teacher_ppl": 8.0, "seeds": {
        "0": {"labels": 9.0, "kd": 9.9}}}}})
    assert one["default_kd_vs_labels"]["long"] == pytest.approx(0.1)
    assert one["spread"]["default_kd_vs_labels"]["long"] is None
    assert one["default_vs_keras"]["long"] is None  # Keras's student not measured


def test_distill_sweep_table_picks_settings_never_worse_than_labels():
    from benchmarks.distill import SWEEP, KDConfig, sweep_table

    assert KDConfig(0.0, 1.0, 2.0, "jsd").name == "w0-1_T2_jsd"
    a, b = SWEEP[0].name, SWEEP[1].name
    regimes = {"init": {"seeds": {"0": {"labels": 10.0, a: 9.0, b: 10.5, "keras_kd": 8.0}}},
               "long": {"seeds": {"0": {"labels": 10.0, a: 9.5, b: 9.0}}}}
    data, table = sweep_table({"regimes": regimes})
    assert data["sweep_worst_vs_labels"][a] == pytest.approx(-0.05)
    assert data["sweep_worst_vs_labels"][b] == pytest.approx(0.05)
    assert data["sweep_worst_vs_keras"][a] == pytest.approx(0.125)  # 9 / 8 - 1 in init
    assert data["sweep_never_worse"] == [a]
    assert data["sweep_vs_labels"][a] == {"init": pytest.approx(-0.1), "long": pytest.approx(-0.05)}
    assert data["sweep_vs_labels"]["keras_kd"] == {"init": pytest.approx(-0.2), "long": None}
    assert "| labels only (ppl) | 10.000 | 10.000 | | |" in table
    assert f"| {a} | -10.00% | -5.00% | -5.00% | +12.50% |" in table
    assert "| keras_kd | -20.00% | - | -20.00% | - |" in table


def test_distill_smollm2_curve_table():
    from benchmarks.distill import curve_table

    assert curve_table({"0": None, "100": None}) == ""
    table = curve_table({"0": {"labels": 592.74, "kd": 592.74}, "100": {"labels": 133.81},
                         "null_reason": "budgets 100 not finished"})
    assert "| 0 | 592.7 | 592.7 |\n| 100 | 133.8 | - |" in table
    assert table.rstrip().endswith("budgets 100 not finished")
