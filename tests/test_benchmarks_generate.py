"""``benchmarks/generate.py`` beside llama.cpp: the medians of interleaved runs, the ratios of
ours to the llama.cpp file of matching precision, the plot's points, the README table, the
clear error without llama-cpp-python and, where it is installed, llama.cpp scoring a GGUF on
the same token ids as the Keras model loaded from it."""

import sys

import numpy as np
import pytest

from benchmarks import _llamacpp, _readme, generate
from tfcompress.errors import TfcompressError


def run(decode, prefill, load=2.0):
    return {"decode_tps": decode, "prefill_tps": prefill, "ttft_s": 128 / prefill,
            "load_avg": load, "greedy": [1, 2]}


def test_medians_of_repeated_runs():
    m = _llamacpp.medians([run(10.0, 100.0, 3.0), run(30.0, 400.0, 2.5),
                           run(20.0, 200.0, 2.0), run(40.0, 300.0, 1.0)])
    assert m["decode_tps"] == 25.0 and m["prefill_tps"] == 250.0  # even count: middle pair
    assert m["ttft_s"] == pytest.approx((128 / 200 + 128 / 300) / 2)
    assert m["repeats"] == 4 and m["load_avg"] == [3.0, 2.5, 2.0, 1.0]
    assert m["runs"][1] == {"decode_tps": 30.0, "prefill_tps": 400.0, "ttft_s": 128 / 400}
    with pytest.raises(ValueError, match="no runs"):
        _llamacpp.medians([])


def test_peer_ratios_pair_int8_with_q8_0_and_int4_with_q4_k_m():
    timing = {"dynamic_int8": {"1": {"decode_tps": 80.0, "prefill_tps": 700.0},
                               "2": {"decode_tps": 110.0, "prefill_tps": 1400.0}},
              "llama.cpp Q8_0": {"1": {"decode_tps": 100.0, "prefill_tps": 350.0},
                                 "2": {"decode_tps": 137.5, "prefill_tps": 700.0}},
              "int4": {"2": {"decode_tps": 90.0, "prefill_tps": 1200.0}},
              "llama.cpp Q4_K_M": {"1": {"decode_tps": 90.0, "prefill_tps": 300.0},
                                   "2": {"decode_tps": 120.0, "prefill_tps": 600.0}},
              "llama.cpp Q4_0": {"2": {"decode_tps": 1.0, "prefill_tps": 1.0}}}
    res = {"file_mb": {"dynamic_int8": 170.0, "llama.cpp Q8_0": 136.0, "int4": 90.0,
                       "llama.cpp Q4_K_M": 100.0, "llama.cpp Q4_0": 80.0},
           "ppl": {"dynamic_int8": 46.0, "llama.cpp Q8_0": 45.0, "int4": 50.0,
                   "llama.cpp Q4_K_M": 47.5},
           "timing": timing}
    r = _llamacpp.peer_ratios(res, float_ppl=40.0)
    assert r["int8_mb_vs_q8_0"] == pytest.approx(1.25)
    assert r["int8_ppl_ratio"] == pytest.approx(1.15)
    assert r["q8_0_ppl_ratio"] == pytest.approx(1.125)
    assert r["int4_mb_vs_q4_k_m"] == pytest.approx(0.9)
    assert r["int4_ppl_ratio"] == pytest.approx(1.25)
    assert r["q4_k_m_ppl_ratio"] == pytest.approx(1.1875)
    assert r["decode_vs_llamacpp"] == {"int8_vs_q8_0": {"1": 0.8, "2": 0.8},
                                       "int4_vs_q4_k_m": {"2": 0.75}}  # int4 not on 1 thread
    assert r["prefill_vs_llamacpp"] == {"int8_vs_q8_0": {"1": 2.0, "2": 2.0},
                                        "int4_vs_q4_k_m": {"2": 2.0}}
    # no llama.cpp file of matching precision: no ratio to it
    alone = {"file_mb": {"int4": 90.0}, "ppl": {"int4": 50.0}, "timing": {"int4": timing["int4"]}}
    assert _llamacpp.peer_ratios(alone, 40.0) == {
        "int4_ppl_ratio": 1.25, "decode_vs_llamacpp": {}, "prefill_vs_llamacpp": {}}


def test_keys_use_our_best_row_of_each_precision_within_the_peers_size():
    """The lowest perplexity among the rows no larger than llama.cpp's file of that precision
    (the over-budget row is passed over), all rows where none fits; the keys follow it."""
    res = {"file_mb": {"int4": 90.0, "rotated_int4": 91.0, "rotated_int4_budget": 106.0,
                       "dynamic_int8": 143.0, "rotated_dynamic_int8": 143.5,
                       "llama.cpp Q4_K_M": 105.5, "llama.cpp Q8_0": 140.0},
           "ppl": {"int4": 60.0, "rotated_int4": 52.0, "rotated_int4_budget": 47.0,
                   "dynamic_int8": 46.0, "rotated_dynamic_int8": 45.5, "llama.cpp Q8_0": 45.0,
                   "llama.cpp Q4_K_M": 47.5},
           "timing": {"rotated_int4": {"1": {"decode_tps": 60.0, "prefill_tps": 600.0}},
                      "int4": {"1": {"decode_tps": 99.0, "prefill_tps": 999.0}},
                      "llama.cpp Q4_K_M": {"1": {"decode_tps": 50.0, "prefill_tps": 300.0}}}}
    rows = generate.best_rows(res)
    assert rows == {"int4": "rotated_int4", "dynamic_int8": "rotated_dynamic_int8"}
    r = _llamacpp.peer_ratios(res, 40.0, rows)
    assert r["int4_mb_vs_q4_k_m"] == pytest.approx(91.0 / 105.5)
    assert r["int4_ppl_ratio"] == pytest.approx(1.3) and r["int8_ppl_ratio"] == pytest.approx(
        45.5 / 40)
    assert r["decode_vs_llamacpp"] == {"int4_vs_q4_k_m": {"1": 1.2}}
    res["file_mb"]["rotated_int4_budget"] = 105.0  # within Q4_K_M's bytes now: the best
    assert generate.best_rows(res)["int4"] == "rotated_int4_budget"
    assert generate.best_rows({"file_mb": {"int4": 90.0}, "ppl": {}}) == {}  # not scored


def test_a_row_from_its_own_process_extends_the_run_and_rewrites_its_notes():
    """`export_row`'s results of one mode, merged: tables extended (the other modes' figures
    kept), the mode's note replaced (not appended twice), other notes and keys kept or set."""
    res = {"ppl": {"int4": 50.0}, "keras_ppl": {"float": 40.0},
           "notes": ["int4: old", "rotated_int4: kept"], "rotation_max_rel_logit_diff": 1.0}
    generate.merge_row(res, {"ppl": {"rotated_int4_budget": 44.0},
                             "keras_ppl": {"rotated_budget_carried": 43.0},
                             "notes": ["int4: new"], "rotation_max_rel_logit_diff": 3e-6,
                             "budget_mb": 105.5})
    assert res == {"ppl": {"int4": 50.0, "rotated_int4_budget": 44.0},
                   "keras_ppl": {"float": 40.0, "rotated_budget_carried": 43.0},
                   "notes": ["rotated_int4: kept", "int4: new"],
                   "rotation_max_rel_logit_diff": 3e-6, "budget_mb": 105.5}


def test_plot_points_and_table_of_both_runtimes(tmp_path):
    res = {"file_mb": {"int4": 90.0, "dynamic_int8": 170.0, "llama.cpp Q4_0": 92.0,
                       "llama.cpp F16": 270.0},
           "ppl_ratio_vs_float": {"int4": 1.1, "dynamic_int8": 1.02, "llama.cpp Q4_0": 1.2,
                                  "llama.cpp F16": 1.0},
           "ppl_ratio_vs_keras": {"int4": 1.01},
           "timing": {"int4": {"1": {"decode_tps": 50.4, "prefill_tps": 400.0, "repeats": 3},
                               "2": {"decode_tps": 90.0, "prefill_tps": 800.0, "repeats": 3}}},
           "timing_load_avg": [2.04, 3.5], "int4_mb_vs_q4_k_m": 0.9,
           "decode_vs_llamacpp": {"int4_vs_q4_k_m": {"1": 0.5, "2": 1.25}},
           "llamacpp": {"version": "0.3.36", "source": "m.Q4_1.gguf", "source_type": "MOSTLY_Q4_1"}}
    assert generate.quality_size_points(res) == {
        "ours": [("int4", 90.0, 1.1), ("dynamic_int8", 170.0, 1.02)],
        "llama.cpp": [("Q4_0", 92.0, 1.2), ("F16", 270.0, 1.0)]}
    generate.plot_quality_size(res, tmp_path / "size.png")
    assert (tmp_path / "size.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["size.png"]
    table = _readme.generate_table(res)
    assert "| ours int4 | 90.0 | 1.100 | 1.010 | 50 | 400 | 90 | 800 |" in table
    assert "| llama.cpp F16 | 270.0 | 1.000 | - | - | - | - | - |" in table
    assert table.endswith("llama-cpp-python 0.3.36: F16 made from m.Q4_1.gguf (its type "
                          "MOSTLY_Q4_1), the others from that F16; `int4_mb_vs_q4_k_m` "
                          "0.900; `decode_vs_llamacpp` int4_vs_q4_k_m: "
                          "0.50 (1 thread), 1.25 (2 threads); tokens/s: the median of 3 "
                          "interleaved runs each, 1-minute load average 2.0-3.5 while timing.")


def test_without_llama_cpp_a_full_run_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(TfcompressError, match=r"llama_cpp is not importable .*pip install "
                                              r"tfcompress\[bench\]"):
        generate.main(["--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(TfcompressError, match="--repeats must be 1 or more timing rounds, got 0"):
        generate.main(["--repeats", "0", "--out", str(tmp_path / "out")])
    with pytest.raises(TfcompressError, match="rotated_int4_budget under --quick needs "
                                              "--budget-mb"):
        generate.main(["--quick", "--modes", "rotated_int4_budget"])


def test_source_type_of_a_gguf(tmp_path):
    from tests.llm_checkpoints import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", "a tiny text " * 50, layers=1, vocab_size=260)
    assert _llamacpp.source_type(gguf) in {"not declared", "ALL_F32"}


def test_llama_cpp_scores_the_same_ids_as_the_keras_model(tmp_path):
    """llama.cpp's F16 of a tiny random GGUF, driven as our bundles are, against the float Keras
    model loaded from that GGUF: same logits, same perplexity on the same windows."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python: the [bench] extra")
    from benchmarks.generate import keras_perplexity
    from tests.llm_checkpoints import write_tiny_gguf
    from tfcompress.evaluate import keras_forward
    from tfcompress.models.loaders import load_gguf

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", "a tiny text of words " * 80, layers=1,
                           pre="default")
    f16 = _llamacpp.quantize(llama_cpp, gguf, tmp_path / "tiny.F16.gguf", "F16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.F16.gguf", "tiny.gguf"]
    model = load_gguf(gguf)
    ids = np.random.default_rng(0).integers(0, 256, 41)
    runner = generate.open_runner(f16, threads=1, logits_all=True)
    ours = keras_forward(model)(ids[None, :16])[0]
    theirs = runner.logits(ids[:16])
    assert np.abs(theirs - ours).max() < 2e-2 * np.abs(ours).max()
    runner.reset()
    runner.prefill(ids[:15])
    np.testing.assert_allclose(runner.decode(int(ids[15])), theirs[15], atol=1e-4)
    runner.close()
    assert generate.exported_perplexity(f16, ids, 16) == pytest.approx(
        keras_perplexity(model, ids, 16), rel=1e-2)


def test_decode_4096_vs_256_is_the_long_bundles_speed_over_the_short_ones():
    """decode_cache's ratios, which generate reports too: each long bundle's median tokens/s
    over the 256 one's, keyed by what it tests, 2 threads bare and 1 thread ``_1t``."""
    from benchmarks.decode_cache import BUNDLES, length_ratios

    tps = {"decode_tps": {"short_1t": 50.0, "short_2t": 40.0, "long_1t": 45.0, "long_2t": 30.0,
                          "flat_1t": 12.5, "flat_2t": 10.0, "half_1t": 40.0, "half_2t": 36.0},
           "prefill_tps": {"short_1t": 200.0, "short_2t": 400.0, "long_1t": 100.0,
                           "long_2t": 400.0, "flat_1t": 50.0, "flat_2t": 80.0,
                           "half_1t": 150.0, "half_2t": 300.0}}
    bundles = {"short": (256, None, "float32"), "long": (4096, "auto", "float32"),
               "flat": (4096, None, "float32"), "half": (4096, (256,), "float16")}
    r = length_ratios(tps, bundles)
    assert r == pytest.approx({
        "decode_4096_vs_256": 0.75, "decode_4096_vs_256_1t": 0.9,
        "prefill_4096_vs_256": 1.0, "prefill_4096_vs_256_1t": 0.5,
        "decode_4096_unbucketed_vs_256": 0.25, "decode_4096_unbucketed_vs_256_1t": 0.25,
        "prefill_4096_unbucketed_vs_256": 0.2, "prefill_4096_unbucketed_vs_256_1t": 0.25,
        "decode_4096_f16_vs_256": 0.9, "decode_4096_f16_vs_256_1t": 0.8,
        "prefill_4096_f16_vs_256": 0.75, "prefill_4096_f16_vs_256_1t": 0.75})
    # generate's pair is the issue's: 256 positions, and 4,096 with the library's buckets
    short, long = (BUNDLES[name] for name in generate.LENGTHS)
    assert short == (256, None, "float32") and long == (4096, "auto", "float32")
