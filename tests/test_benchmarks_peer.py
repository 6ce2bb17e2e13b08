"""``benchmarks/llm.py --peer``: ours and the peer's methods interleaved in fresh processes,
their rows, each tool's ratios to its own float model, ours over the peer's, and a failing
method recorded with its error, using a fake interpreter for both tools (a shell script
writing fixed results), so no torch and no model is needed."""

import json
import stat
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import llm

FAKE = """#!/bin/sh
# ours: -m benchmarks.llm --methods M ... --worker F; the peer: -m ... --method M --out F
while [ $# -gt 0 ]; do case "$1" in
  --method|--methods) m="$2";; --out) o="$2";; --worker) w="$2";; esac; shift; done
echo "${w:+ours }${o:+peer }$m" >> "$(dirname "$0")/calls"
v='"versions": {"llmcompressor": "0.x", "torch": "2.x"}, "torch_threads": 2'
case "${w:+ours}$m" in
  oursfloat) echo '{"rows": {"float": {"ppl": 50.0, "note": ""}},
    "seconds": {"load_gguf": 2.0, "float": 2.0}, "rss_phases": {"start_gb": 0.6}}' > "$w";;
  ourssparsegpt_50) echo '{"rows": {"sparsegpt_50": {"ppl": 80.0, "note": "",
    "peak_rss_gb": 1.8}}, "seconds": {"load_gguf": 2.0, "sparsegpt_50": 5.0},
    "rss_phases": {"start_gb": 0.6}}' > "$w";;
  float) echo '{"ppl": 40.0, "eval_seconds": 1.0, '"$v}" > "$o";;
  sparsegpt_50) echo '{"ppl": 60.0, "eval_seconds": 1.0, "seconds": 12.5,
    "peak_rss_gb": 1.5, "calibration": "2 x 8 tokens", "zero_share": 0.5, '"$v}" > "$o";;
  *) echo "Traceback (most recent call last):" >&2
     echo "ValueError: columns not divisible by group_size" >&2; exit 1;;
esac
"""


def test_peer_and_ours_interleaved_ratios_and_failures(tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    written = {}
    monkeypatch.setattr(llm, "write_results",
                        lambda name, table, data, args: written.update(data))
    monkeypatch.setattr(llm, "OURS_PYTHON", str(fake))
    args = SimpleNamespace(merge_from=[], methods=[], peer=None, quick=True, calib=2,
                           calib_len=8, name="llm", command="test", worker=None)
    b = llm.Bench(args)  # no methods, no peer: nothing loaded
    b.gguf, b.window = tmp_path / "model.gguf", 4
    b.calibration = [np.arange(16).reshape(2, 8)]
    b.eval_ids = np.arange(9)
    args.peer = str(fake)
    args.peer_methods = ["float", "sparsegpt_50", "gptq_w4a16_g64"]
    llm.run_peer(b)

    assert (tmp_path / "calls").read_text().split("\n")[:-1] == [
        "ours float", "peer float", "ours sparsegpt_50", "peer sparsegpt_50",
        "ours int4_g64_sym_gptq_act", "peer gptq_w4a16_g64"]
    assert written["sparsegpt_50"] == pytest.approx(80.0 / 50.0)  # to our float
    assert written["peer_sparsegpt_50"] == pytest.approx(60.0 / 40.0)  # to the peer's float
    assert written["peer_float_ppl"] == 40.0 and "peer_float" not in written
    assert written["seconds_sparsegpt_vs_peer"] == 0.4  # 5 s / 12.5 s
    assert written["peak_rss_vs_peer_sparsegpt"] == 1.2  # 1.8 GB / 1.5 GB
    assert written["peak_rss_vs_peer"] == {"sparsegpt": 1.2, "gptq": None}
    assert written["ppl_vs_peer_sparsegpt"] == 1.067  # 1.6 / 1.5
    assert written["seconds_gptq_vs_peer"] is None and written["ppl_vs_peer_gptq"] is None
    assert written["failures"] == {
        "int4_g64_sym_gptq_act": "tfcompress int4_g64_sym_gptq_act: ValueError: columns not "
                             "divisible by group_size",
        "peer_gptq_int4_g64": "llm-compressor gptq_w4a16_g64: ValueError: columns not "
                              "divisible by group_size"}
    assert set(written["load_by_method"]) == {"float", "peer_float", "sparsegpt_50",
                                              "peer_sparsegpt_50", "int4_g64_sym_gptq_act",
                                              "peer_gptq_int4_g64"}
    assert b.seconds["sparsegpt_50_load_gguf"] == 2.0 and "load_gguf" not in b.seconds
    row = b.rows["peer_sparsegpt_50"]
    assert row["peak_rss_gb"] == 1.5 and b.seconds["peer_sparsegpt_50"] == 12.5
    assert "2 x 8 tokens" in row["note"] and "50.0% of Linear weights zero" in row["note"]
    assert "| peer_sparsegpt_50 | 60.00 | 1.500 | - |" in b.table


def test_peer_error_takes_the_exception_line():
    log = "loading\nTraceback (most recent call last):\n  File x\nRuntimeError: boom\n"
    assert llm._peer_error(log) == "RuntimeError: boom"
    assert llm._peer_error("no error here") == "no error here"


def test_inplace_takes_exactly_one_method(capsys):
    for methods in (["wanda_50", "sparsegpt_50"], ["students"]):
        with pytest.raises(SystemExit):
            llm.main(["--inplace", "--methods", *methods])
        assert "--inplace compresses the float model itself" in capsys.readouterr().err


def test_worker_compresses_in_place_and_writes_only_its_file(tmp_path, monkeypatch):
    import tensorflow as tf

    from tests.llm_checkpoints import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", "a tiny text " * 50, layers=1,
                           vocab_size=260)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.integers(0, 260, (2, 16)))
    np.save(tmp_path / "eval.npy", rng.integers(0, 260, 33))
    monkeypatch.setattr(llm, "write_results", lambda *a: pytest.fail("a results file written"))
    out = tmp_path / "out.json"
    try:
        llm.main(["--quick", "--methods", "sparsegpt_50", "--inplace", "--gguf", str(gguf),
                  "--ids", str(tmp_path), "--worker", str(out)])
    finally:
        tf.config.run_functions_eagerly(False)  # --quick runs eagerly; later tests must not
    got = json.loads(out.read_text())
    row, phases = got["rows"]["sparsegpt_50"], got["rss_phases"]
    assert list(got["rows"]) == ["sparsegpt_50"]  # no float pass before it in this process
    assert row["note"].startswith("50.0% of Dense weights zero; block-wise calibration")
    # the peak starts from the very reading "before" is; "before" may sit below the process's
    # start, as core.memory hands freed pages back at once
    assert row["peak_rss_gb"] >= phases["sparsegpt_50_before_gb"] > 0
    assert phases["start_gb"] > 0
    assert np.isfinite(row["ppl"]) and got["seconds"]["sparsegpt_50"] > 0
