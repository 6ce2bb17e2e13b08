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


@pytest.fixture(scope="module")
def gptq():
    """``tied`` quantized by GPTQ onto LiteRT's int4 grid."""
    from tests.test_export_llm import tiny_int4_llama
    from tfcompress.quantize import QuantizeConfig

    return tiny_int4_llama(QuantizeConfig.litert_int4("gptq", types=("Dense",)), vocab=96)


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


def int8_weights(flatbuffer: bytes, names) -> dict[str, np.ndarray]:
    """The int8 per-channel matmul weights of ``names`` in an `export_llm` file, dequantized,
    as ``(d_in, d_out)``."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    from tfcompress.export.llm_int4 import _layer_ops, llm_scopes
    from tfcompress.export.llm_tied import _dequantized

    model = fbu.read_model_from_bytearray(flatbuffer)
    return {name: _dequantized(model, subgraph.tensors[op.inputs[1]]).T
            for name, subgraph, op in _layer_ops(model, llm_scopes(names))}


def test_budget_rounds_int8_maps_from_the_float_model_and_keeps_gptq_codes(tied, gptq,
                                                                             tmp_path):
    """A GPTQ model's maps bought int8 are rounded from ``float_model``'s weights (not from
    GPTQ's int4 values), their errors measured against those; the int4 maps keep GPTQ's codes."""
    from tfcompress.export.llm import export_llm, keras_logits, reference_logits
    from tfcompress.export.llm_graph import decoder_of
    from tfcompress.export.llm_int4 import int4_weights
    from tfcompress.export.llm_runner import LLMRunner
    from tfcompress.export.verification import agreement_stats

    kwargs = dict(prefill_lengths=(8,), cache_length=32, mode="int4", verify_output=False,
                  verbose=False)
    plain = export_llm(gptq, tmp_path / "plain", **kwargs)
    budget = (plain.bytes + 6000) / 1e6
    # verified (default tolerances) against the weights the file carries: `reference_logits`
    mixed = export_llm(gptq, tmp_path / "mixed", budget_mb=budget, calibration=CALIB,
                       float_model=tied, **{**kwargs, "verify_output": True})
    report = mixed.int4["budget"]
    int8 = report["int8"]
    assert plain.bytes < mixed.bytes <= budget * 1e6 and 0 < len(int8) < 14
    assert report["int8_from_float"] == int8
    assert mixed.int4["copied"] == [n for n in plain.int4["copied"] if n not in int8]
    assert mixed.int4["rerounded"] == []
    dec, ref = decoder_of(gptq), decoder_of(tied)
    q8 = Quantizer("litert", 8, "channel")
    stats = input_stats(dec, CALIB)
    for name in report["layers"]:  # errors against the float weights
        w, f = dec.weights[f"{name}.w"][0], ref.weights[f"{name}.w"][0]
        xtx, n = stats[name]
        assert report["int4_error"][name] == pytest.approx(weight_error(xtx, n, f, w))
        assert report["int8_error"][name] == pytest.approx(weight_error(xtx, n, f,
                                                                        q8.roundtrip(f)))
    flatbuffer = (tmp_path / "mixed" / "model.tflite").read_bytes()
    in_file = int4_weights(flatbuffer)
    assert set(in_file) == set(report["layers"]) - set(int8)
    for name, w in in_file.items():  # GPTQ's codes, bit for bit
        np.testing.assert_array_equal(w, dec.weights[f"{name}.w"][0])
    for name, w in int8_weights(flatbuffer, int8).items():
        f, g = ref.weights[f"{name}.w"][0], dec.weights[f"{name}.w"][0]
        np.testing.assert_allclose(w, q8.roundtrip(f), rtol=0, atol=1e-6)
        assert np.abs(w - q8.roundtrip(g)).max() > 1e-3  # not GPTQ's int4 values again
    ids = np.asarray([1, 5, 9, 3, 7, 2, 8, 11, 4, 6, 10])
    want = keras_logits(tied)(ids[None])[0]
    errors = [np.abs(LLMRunner(tmp_path / name).logits(ids) - want).mean()
              for name in ("plain", "mixed")]
    assert errors[1] < errors[0]
    got = LLMRunner(tmp_path / "mixed").logits(ids)
    carried = reference_logits(gptq, {n: ref.weights[f"{n}.w"][0] for n in int8})(ids)
    error = {name: agreement_stats(logits, got)["relative_error"]
             for name, logits in (("gptq", keras_logits(gptq)(ids[None])[0]),
                                  ("carried", carried))}
    assert error["carried"] < error["gptq"] / 2  # what the old check (vs GPTQ) charged


def test_a_budget_bundle_is_verified_against_the_weights_it_carries(tied, gptq):
    """int8 maps bought from ``float_model`` are judged against those float weights, the int4
    maps against GPTQ's codes: with every map swapped the reference is the float model, with
    none it is the Keras GPTQ model (the bundle checked against it: the test above)."""
    from tfcompress.export.llm import keras_logits, reference_logits
    from tfcompress.export.llm_graph import decoder_of

    ids = np.asarray([1, 5, 9, 3, 7, 2, 8, 11, 4, 6, 10, 40, 77, 12])
    floats = {n: decoder_of(tied).weights[f"{n}.w"][0] for n in decoder_of(gptq).quantized}
    np.testing.assert_allclose(reference_logits(gptq, floats)(ids),
                               keras_logits(tied)(ids[None])[0], rtol=1e-4, atol=1e-4)
    own = {"0.q": decoder_of(gptq).weights["0.q.w"][0]}  # swapping in its own codes: GPTQ's
    np.testing.assert_allclose(reference_logits(gptq, own)(ids),
                               keras_logits(gptq)(ids[None])[0], rtol=1e-4, atol=1e-4)


def test_float_model_must_be_the_float_form_of_the_quantized_model(tied, gptq, tmp_path):
    from tfcompress.export.llm import export_llm
    from tfcompress.models import LlamaConfig, build_llama

    kwargs = dict(prefill_lengths=(8,), cache_length=32, mode="int4", budget_mb=1)
    wider = build_llama(LlamaConfig(vocab_size=96, d_model=64, n_layers=2, n_heads=4,
                                    n_kv_heads=2, d_ff=64, tie_embeddings=True))
    with pytest.raises(TfcompressError, match=r"float_model must be the float model that model "
                                              r"was quantized from, got one with quantized maps "
                                              r"\['0.q', "):
        export_llm(gptq, tmp_path / "b", float_model=gptq, **kwargs)
    with pytest.raises(TfcompressError, match=r"float_model must have model's linear maps: "
                                              r"'0.q' is \[\(64, 64\)\] there, "
                                              r"\[\(32, 32\)\] in model"):
        export_llm(gptq, tmp_path / "b", float_model=wider, **kwargs)
    assert not (tmp_path / "b").exists()


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
    (dict(float_model="tied"), "float_model is what budget_mb's int8 maps are rounded from: "
                               "give budget_mb too"),
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
