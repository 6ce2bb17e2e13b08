"""The demo pipeline and command line at toy size."""

import json

import pytest

from tfcompress.cli import main
from tfcompress.errors import TfcompressError
from tfcompress.pipeline import DemoSettings, run_demo


def test_quick_demo_writes_a_report_and_reuses_the_teacher(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TFCOMPRESS_CACHE", str(tmp_path / "cache"))
    ctx = run_demo(DemoSettings.quick(), run_dir=tmp_path / "run")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| teacher | keras |" in report and "| teacher (tflite) | tflite |" in report
    assert (tmp_path / "run" / "quality_vs_size.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    keras_ppl, tflite_ppl = (r["quality"]["perplexity"] for r in saved)
    assert abs(keras_ppl - tflite_ppl) / keras_ppl < 1e-3
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
    from tfcompress.models import build_gpt

    path = tmp_path / "m.keras"
    build_gpt("test-tiny").save(path)
    assert main(["evaluate", str(path), "--seq-len", "32", "--windows", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quality"]["tokens"] == 8 * 32
    assert out["params"] == 43136
