"""``benchmarks/llm.py --peer``: the peer's rows, their ratios to the peer's own float model,
and a failing peer method recorded with its error, using a fake peer interpreter (a shell
script writing fixed results), so no torch is needed."""

import stat
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import llm

FAKE_PEER = """#!/bin/sh
# arguments: -m MODULE --gguf F --calib F --eval F --window N --method M --out F
while [ $# -gt 0 ]; do case "$1" in --method) m="$2";; --out) o="$2";; esac; shift; done
case "$m" in
  float) echo '{"ppl": 40.0, "eval_seconds": 1.0, "torch_threads": 2,
    "versions": {"llmcompressor": "0.x", "torch": "2.x"}}' > "$o";;
  sparsegpt_50) echo '{"ppl": 60.0, "eval_seconds": 1.0, "torch_threads": 2, "seconds": 12.5,
    "peak_rss_gb": 1.5, "calibration": "2 x 8 tokens", "zero_share": 0.5,
    "versions": {"llmcompressor": "0.x", "torch": "2.x"}}' > "$o";;
  *) echo "Traceback (most recent call last):" >&2
     echo "ValueError: columns not divisible by group_size" >&2; exit 1;;
esac
"""


def test_peer_rows_ratios_and_failures(tmp_path, monkeypatch):
    peer = tmp_path / "python"
    peer.write_text(FAKE_PEER)
    peer.chmod(peer.stat().st_mode | stat.S_IEXEC)
    written = {}
    monkeypatch.setattr(llm, "write_results",
                        lambda name, table, data, args: written.update(data))
    args = SimpleNamespace(merge_from=[], methods=[], peer=None, quick=True, calib=2,
                           calib_len=8, name="llm", command="test")
    b = llm.Bench(args)  # no methods, no peer: nothing loaded
    b.rows["float"] = {"ppl": 50.0, "params": 1, "note": "", "stored_mb": 4.0}
    b.gguf, b.window = tmp_path / "model.gguf", 4
    b.calibration = [np.arange(16).reshape(2, 8)]
    b.eval_ids = np.arange(9)
    args.peer = str(peer)
    args.peer_methods = ["float", "gptq_w4a16_g128", "sparsegpt_50"]
    llm.run_peer(b)

    assert written["peer_sparsegpt_50"] == pytest.approx(60.0 / 40.0)  # to the peer's float
    assert written["peer_float_ppl"] == 40.0 and "peer_float" not in written
    assert written["peer_gptq_int4_g128"] is None
    assert written["failures"]["peer_gptq_int4_g128"] == (
        "llm-compressor gptq_w4a16_g128: ValueError: columns not divisible by group_size")
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
