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


def test_distill_runs_merge_their_students_per_seed():
    """Labels-only students measured while the teacher trains, KD ones later: one row a seed."""
    from benchmarks.distill import merge_row, summarise

    labels = merge_row(None, {"ppl": {"labels": 12.0}, "seconds": {"labels": 5}}, None)
    assert labels["gap_closed"] == {}
    both = merge_row(labels, {"ppl": {"kd": 10.0, "keras_kd": 13.0},
                              "seconds": {"kd+keras_kd": 7}}, 8.0)
    assert both["ppl"] == {"labels": 12.0, "kd": 10.0, "keras_kd": 13.0}
    assert both["gap_closed"] == {"kd": 0.5, "keras_kd": -0.25}
    assert both["seconds"] == {"labels": 5, "kd+keras_kd": 7}
    # a row saved as one number of seconds (and a run whose own row is one number too)
    assert merge_row({"ppl": {"labels": 12.0}, "seconds": 5}, {"ppl": {}, "seconds": 7},
                     None)["seconds"] == {"all": 7}
    other = merge_row(None, {"ppl": {"labels": 12.0, "kd": 11.0}, "seconds": {}}, 8.0)
    rows = {"0": both, "1": other, "2": labels, "settings": {"steps": 1000}}
    data, _ = summarise({"teacher_ppl": 8.0, "regimes": {"long": rows}})
    assert data["gap_closed_long"] == pytest.approx(0.375)  # seed 2 has no KD student yet
    assert data["gap_closed_seeds"] == {"gap_closed_long": 2}
    assert data["gap_closed_spread"]["gap_closed_long"] == pytest.approx(0.125 * 2 ** 0.5)
    assert data["kd_vs_labels"]["long"]["kd"] == pytest.approx((10 / 12 + 11 / 12) / 2 - 1)
    # labels-only as good as the teacher: no gap to close, so no fraction of it
    close = merge_row(None, {"ppl": {"labels": 8.1, "kd": 8.3}, "seconds": {}}, 8.0)
    assert close["gap_closed"] == {"kd": None}
    data, table = summarise({"teacher_ppl": 8.0, "regimes": {"long": {
        "0": close, "settings": {"steps": 1000}}}})
    assert data["gap_closed_long"] is None and "no gap to close" in \
        data["gap_closed_null_reason"]["gap_closed_long"]
    assert data["kd_vs_labels"]["long"]["kd"] == pytest.approx(8.3 / 8.1 - 1)
    assert "| +2.5% ± n/a (1 seed) | - | undefined (no gap) |" in table


def test_distill_smollm2_curve_table():
    from benchmarks.distill import curve_table

    assert curve_table({"0": None, "100": None}) == ""
    table = curve_table({"0": {"labels": 592.74, "kd": 592.74}, "100": {"labels": 133.81},
                         "null_reason": "budgets 100 not finished"})
    assert "| 0 | 592.7 | 592.7 |\n| 100 | 133.8 | - |" in table
    assert table.rstrip().endswith("budgets 100 not finished")


def test_distill_new_kd_settings_keep_labels_only_students():
    """Labels-only students do not depend on alpha/T: a KD rerun keeps them, nothing else."""
    from benchmarks.distill import keep_rows, mark_missing_budgets

    def rows():
        return {"settings": {"keep": [0], "steps": 9, "alpha": 0.0, "temperature": 1.0},
                "0": {"ppl": {"labels": 7.0, "kd": 7.2, "keras_kd": 7.2},
                      "gap_closed": {"kd": -0.3}, "seconds": {"labels+kd+keras_kd": 9}},
                "1": {"ppl": {"labels": 7.1, "kd": 7.3}, "gap_closed": {"kd": -0.2},
                      "seconds": {"labels": 4, "kd": 3}}}

    same = rows()
    keep_rows(same, {"steps": 9, "alpha": 0.0, "temperature": 1.0})
    assert same == rows()
    kd_changed = rows()
    keep_rows(kd_changed, {"steps": 9, "alpha": [0.0, 1.0], "temperature": 1.0})
    assert kd_changed["0"] == {"ppl": {"labels": 7.0}, "gap_closed": {}, "seconds": {}}
    assert kd_changed["1"]["ppl"] == {"labels": 7.1} and kd_changed["1"]["seconds"] == {
        "labels": 4}
    assert kd_changed["settings"]["alpha"] == [0.0, 1.0] and kd_changed["settings"]["keep"] == [0]
    steps_changed = rows()
    keep_rows(steps_changed, {"steps": 10, "alpha": 0.0, "temperature": 1.0})
    assert steps_changed == {}

    from benchmarks.distill import logits_only_table, merge_row

    assert logits_only_table({"teacher_ppl": 8.0}) == ""
    row = merge_row(None, {"ppl": {"labels": 12.0, "kd": 10.0}, "seconds": {}}, 8.0)
    table = logits_only_table({"teacher_ppl": 8.0, "logits_only": {"command": "cmd", "regimes": {
        "little": {"0": row, "settings": {"steps": 400, "alpha": 0.0}}}}})
    assert "Logits only, alpha 0 for both (`cmd`)" in table and "| 50.0% ± n/a (1 seed) |" in table

    curve = {"0": {"labels": 5.0, "kd": 5.0}, "100": {"labels": 4.0}, "null_reason": "old"}
    mark_missing_budgets(curve)
    assert curve["null_reason"].startswith("budgets 100, 300, 1000 not run")
    curve |= {b: {"labels": 1.0, "kd": 1.0} for b in ("100", "300", "1000")}
    mark_missing_budgets(curve)
    assert "null_reason" not in curve
