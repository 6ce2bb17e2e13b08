"""The demo pipeline and command line at toy size."""

import json

import pytest

from tfcompress.cli import main
from tfcompress.errors import TfcompressError
from tfcompress.pipeline import DEMO_STAGES, DemoSettings, run_demo


def test_quick_demo_writes_a_report_and_reuses_the_teacher(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TFCOMPRESS_CACHE", str(tmp_path / "cache"))
    ctx = run_demo(DemoSettings.quick(), run_dir=tmp_path / "run")
    report = (tmp_path / "run" / "report.md").read_text()
    for name in ("teacher", "student", "student-pruned", "teacher-lowrank", ctx.final):
        assert f"| {name} | keras |" in report
    assert ctx.final == "student-pruned-int4"
    assert (tmp_path / "run" / "quality_vs_size.png").stat().st_size > 1000
    saved = {r["name"]: r for r in json.loads((tmp_path / "run" / "report.json").read_text())}
    assert list(saved)[0] == "teacher"  # the baseline of every ratio
    tflite = next(r for n, r in saved.items() if r["kind"] == "tflite")
    keras_ppl = saved[ctx.final]["quality"]["perplexity"]
    assert abs(tflite["quality"]["perplexity"] - keras_ppl) / keras_ppl < 0.02
    assert set(ctx.timings) == set(DEMO_STAGES)
    assert list((tmp_path / "cache").glob("teacher-*.keras"))
    capsys.readouterr()
    assert main(["demo", "--quick", "--run-dir", str(tmp_path / "again"),
                 "--stages", "teacher", "evaluate"]) == 0
    assert "loaded from cache" in capsys.readouterr().out
    assert ctx.timings["teacher"] > 0


def test_unknown_stage_raises_before_work(tmp_path):
    with pytest.raises(TfcompressError, match="stages \\['bake'\\] are unknown"):
        run_demo(DemoSettings.quick(), run_dir=tmp_path, stages=("teacher", "bake"))


def test_cli_evaluates_a_saved_model(tmp_path, capsys):
    from tfcompress.models import build_gpt, gpt_param_count, preset

    path = tmp_path / "m.keras"
    build_gpt("test-tiny").save(path)
    assert main(["evaluate", str(path), "--seq-len", "32", "--windows", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quality"]["tokens"] == 8 * 32
    assert out["params"] == gpt_param_count(preset("test-tiny"))
