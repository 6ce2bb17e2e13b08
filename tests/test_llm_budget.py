"""export_llm(mode="int4", budget_mb=...): measured sensitivity, the greedy choice, the file."""

import json

import numpy as np
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.export.llm_budget import (
    choose_int8,
    input_stats,
    int4_bytes,
    int8_bytes,
    layer_sensitivity,
    weight_error,
)
from tfcompress.quantize.quantizers import Quantizer

CALIB = np.random.default_rng(3).integers(0, 96, (2, 16))


def test_stored_bytes_by_hand():
    assert int4_bytes(64, 10) == 320 + 2 * 10 * 2  # nibbles + float16 scale per block of 32
    assert int8_bytes(64, 10) == 640 + 10 * (4 + 8)  # bytes + float32 scale, int64 zero point


def test_weight_error_is_the_mean_squared_output_change_per_row():
    x = np.array([[1.0, 0.0], [0.0, 2.0]])
    w, w_hat = np.ones((2, 2)), np.zeros((2, 2))
    # rows' output changes: [1, 1] and [2, 2]: (2 + 8) / 2
    assert weight_error(x.T @ x, 2, w, w_hat) == pytest.approx(5.0)
    rng = np.random.default_rng(0)
    x, w, w_hat = rng.normal(size=(7, 4)), rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    direct = np.mean(np.sum((x @ w - x @ w_hat) ** 2, axis=1))
    assert weight_error(x.T @ x, 7, w, w_hat) == pytest.approx(direct)


def test_sensitivity_rounds_onto_litert_int4_and_int8_grids():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(50, 64)), rng.normal(size=(64, 8))
    sens = layer_sensitivity(x.T @ x, 50, w)
    for bits, q in {4: Quantizer("litert", 4, "group", group_size=32),
                    8: Quantizer("litert", 8, "channel")}.items():
        direct = np.mean(np.sum((x @ (w - q.roundtrip(w))) ** 2, axis=1))
        assert sens[bits] == pytest.approx(direct)
    assert sens[4] > 50 * sens[8] > 0  # 16 levels vs 256
    on_grid = Quantizer("litert", 4, "group", group_size=32).roundtrip(w)
    assert layer_sensitivity(x.T @ x, 50, on_grid)[4] == 0.0  # already int4: nothing to gain


def test_greedy_buys_the_most_error_saved_per_byte_within_the_spare():
    # saved per extra byte: a 0.8, b 2.0, c 0.5; d gets worse at int8
    sens = {"a": {4: 9.0, 8: 1.0}, "b": {4: 4.0, 8: 0.0}, "c": {4: 3.0, 8: 1.0},
            "d": {4: 1.0, 8: 2.0}}
    extra = {"a": 10, "b": 2, "c": 4, "d": 1}
    assert choose_int8(sens, extra, 0) == []
    assert choose_int8(sens, extra, 2) == ["b"]
    assert choose_int8(sens, extra, 11) == ["b", "c"]  # a does not fit after b; c does
    assert choose_int8(sens, extra, 12) == ["b", "a"]
    assert choose_int8(sens, extra, 100) == ["b", "a", "c"]  # never d


@pytest.fixture(scope="module")
def tied():
    from tests.test_export_llm import tiny_int4_llama

    return tiny_int4_llama(None, vocab=96)


def test_input_stats_are_the_keras_layers_inputs(tied):
    from tfcompress.core import capture_inputs
    from tfcompress.export.llm_graph import decoder_of

    stats = input_stats(decoder_of(tied), CALIB)
    assert len(stats) == 14 and all(n == CALIB.size for _, n in stats.values())
    layers = [tied.get_layer(n) for n in ("block0_attn_q", "block1_mlp_down")]
    rows = capture_inputs(tied, layers, CALIB)
    for name, path in (("0.q", "block0_attn_q"), ("1.down", "block1_mlp_down")):
        x = next(v for k, v in rows.items() if path in k)
        np.testing.assert_allclose(stats[name][0], x.T @ x, rtol=1e-4, atol=1e-4)


def test_budget_keeps_the_most_sensitive_maps_int8_within_the_file_size(tied, tmp_path):
    from tfcompress.export.llm import export_llm, keras_logits
    from tfcompress.export.llm_int4 import int4_weights
    from tfcompress.export.llm_runner import LLMRunner

    kwargs = dict(prefill_lengths=(8,), cache_length=32, mode="int4", verify_output=False,
                  verbose=False)
    plain = export_llm(tied, tmp_path / "plain", **kwargs)
    budget = (plain.bytes + 6000) / 1e6
    mixed = export_llm(tied, tmp_path / "mixed", budget_mb=budget, calibration=CALIB, **kwargs)
    report = mixed.int4["budget"]
    assert plain.bytes < mixed.bytes <= budget * 1e6
    assert json.loads((tmp_path / "mixed" / "llm.json").read_text())["int4"] == mixed.int4
    int8 = report["int8"]
    assert 0 < len(int8) < 14 and report["layers"] == {
        n: 8 if n in int8 else 4 for n in report["int4_error"]}
    # chosen by error saved per extra byte: the first is the best ratio of all
    from tfcompress.export.llm_budget import int8_bytes as b8
    from tfcompress.export.llm_graph import decoder_of

    dec = decoder_of(tied)
    extra = {n: b8(*dec.weights[f"{n}.w"][0].shape) - int4_bytes(*dec.weights[f"{n}.w"][0].shape)
             for n in report["layers"]}
    ratio = {n: (report["int4_error"][n] - report["int8_error"][n]) / extra[n] for n in extra}
    assert int8[0] == max(ratio, key=ratio.get)
    in_file = int4_weights((tmp_path / "mixed" / "model.tflite").read_bytes())
    assert set(in_file) == set(report["layers"]) - set(int8)  # the rest stayed int4
    ids = np.asarray([1, 5, 9, 3, 7, 2, 8, 11, 4, 6, 10])
    want = keras_logits(tied)(ids[None])[0]
    errors = [np.abs(LLMRunner(tmp_path / name).logits(ids) - want).mean()
              for name in ("plain", "mixed")]
    assert errors[1] < errors[0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget_mb=0), "budget_mb must be a positive number of megabytes .*got 0"),
    (dict(budget_mb=-5.0), "budget_mb must be a positive number .*got -5.0"),
    (dict(budget_mb="90"), "budget_mb must be a positive number .*got '90'"),
    (dict(budget_mb=0.001), r"budget_mb=0.001 is below the all-int4 bundle's weights alone "
                            r"\(0.015 MB\)"),
    (dict(budget_mb=1, mode="dynamic_int8"), "budget_mb .* needs mode='int4', got "
                                             "mode='dynamic_int8'"),
    (dict(budget_mb=1, calibration=[[1, 96]]), r"calibration must be token ids \(windows, n\) "
                                               r"in \[0, 96\)"),
    (dict(calibration=CALIB), "calibration is what budget_mb's sensitivity is measured on"),
])
def test_bad_budget_is_refused_before_any_work(tied, tmp_path, monkeypatch, kwargs, match):
    import tfcompress.export.llm as llm

    def never(*args, **kw):
        raise AssertionError("work started")

    monkeypatch.setattr(llm, "_convert", never)
    monkeypatch.setattr(llm, "budget_plan", never)
    before = [w.numpy().copy() for w in tied.weights]
    with pytest.raises(TfcompressError, match=match):
        llm.export_llm(tied, tmp_path / "b", **{"mode": "int4", "prefill_lengths": (8,),
                                                 "cache_length": 32, **kwargs})
    assert not (tmp_path / "b").exists()
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, tied.weights, strict=True))
