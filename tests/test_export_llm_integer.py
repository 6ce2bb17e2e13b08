"""Full-integer LLM bundles (`export_llm` modes int16x8 and int8_static) on a tiny random Llama
whose weights sit on LiteRT's int8 per-channel grid, so what is left of the error is the
activations' rounding: integer operators, logits within a few quantization steps on the
calibration text, BOS's float constants at position 0, and the arguments refused."""

from unittest import mock

import keras
import numpy as np
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.export.llm import export_llm
from tfcompress.export.llm_graph import decoder_of
from tfcompress.export.llm_integer import sink_prefix
from tfcompress.export.llm_runner import LLMRunner
from tfcompress.models.llama import LlamaConfig, build_llama
from tfcompress.models.llama_prefix import prefix_cache

BOS = 1
CFG = LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48)
WINDOW = 16
# an integer graph's operators and the activation type each mode gives them
INTEGER_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "RSQRT", "MEAN", "ADD", "MUL",
               "LOGISTIC", "GATHER", "DYNAMIC_UPDATE_SLICE")
ACTIVATIONS = {"int16x8": "int16", "int8_static": "int8"}


@pytest.fixture(scope="module")
def llama():
    """Random weights wide enough to matter, rounded to int8 per output channel (per row of
    the tied embedding) as LiteRT's recipes round them: the bundle's weights are exact."""
    keras.utils.set_random_seed(0)
    model = build_llama(CFG)
    rng = np.random.default_rng(1)
    for v in model.weights:
        if len(v.shape) >= 2:
            w = rng.normal(0, 0.3, v.shape)
            step = np.abs(w).max(axis=1 if "embed" in v.path else 0, keepdims=True) / 127
            v.assign((np.round(w / step) * step).astype("float32"))
    return model


@pytest.fixture(scope="module")
def calibration():
    return np.random.default_rng(2).integers(0, CFG.vocab_size, (2, WINDOW))


@pytest.fixture(scope="module", params=sorted(ACTIVATIONS))
def bundle(request, llama, calibration, tmp_path_factory):
    """Every decode position of the calibration windows calibrated (DECODE_STEPS), so on that
    text no range clips and the logits may differ by rounding only; not rotated, so the
    weights stay on their grid (rotation: tests/test_export_llm_rotation.py)."""
    path = tmp_path_factory.mktemp(request.param)
    with mock.patch("tfcompress.export.llm_integer.DECODE_STEPS", WINDOW + 1):
        result = export_llm(llama, path, prefill_lengths=(8,), cache_length=24,
                            mode=request.param, special_tokens={"bos": BOS}, rotate=False,
                            calibration=calibration, verify_output=request.param == "int16x8",
                            verbose=0)
    return request.param, path, result


def _op_types(path) -> dict[str, dict[str, set[str]]]:
    """Per signature, each operator's output tensor types, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = tfl_flatbuffer_utils.read_model((path / "model.tflite").read_bytes())
    found = {}
    for signature in model.signatureDefs:
        graph = model.subgraphs[signature.subgraphIndex]
        kinds: dict[str, set[str]] = {}
        for op in graph.operators:
            name = ops[model.operatorCodes[op.opcodeIndex].builtinCode]
            kinds.setdefault(name, set()).add(types[graph.tensors[op.outputs[0]].type])
        found[signature.signatureKey.decode()] = kinds
    return found


def test_operators_compute_on_integers(bundle):
    mode, path, _ = bundle
    for signature, kinds in _op_types(path).items():
        # the weight and attention matmuls, norms, softmax, residual adds, the cache writes
        for op in INTEGER_OPS:
            assert kinds[op] == {ACTIVATIONS[mode]}, (signature, op, kinds[op])
        # float only where the signature's float cache and logits cross into the graph
        floats = {op for op, t in kinds.items() if "float32" in t}
        assert floats == {"DEQUANTIZE"}, (signature, floats)
    from ai_edge_litert.interpreter import Interpreter

    decode = Interpreter(str(path / "model.tflite")).get_signature_runner("decode")
    assert decode.get_input_details()["kv_cache_v_1"]["dtype"] == np.float32
    assert decode.get_output_details()["logits"]["dtype"] == np.float32


def _logit_step(path) -> float:
    """The quantization step of the decode signature's logits."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    index = interpreter.get_signature_runner("decode")._subgraph_index
    scales = [d["quantization"][0] for d in interpreter.get_tensor_details(index)
              if d["name"].startswith("lm_head/")]
    return max(scales)


def test_logits_follow_keras_within_quantization_steps(bundle, llama, calibration):
    mode, path, _ = bundle
    ids = np.concatenate([[BOS], calibration[0]])
    got = LLMRunner(path).logits(ids)
    expected = np.asarray(llama(ids[None].astype("int32")))[0]
    # position 0 is BOS's float constant, rounded once onto the logits' grid; after it each
    # of 2 blocks' ~20 quantized ops rounds by half its own step, amplified by the random
    # weights: measured 84 steps of the logits' int16 grid (0.26 % of its range) and 50 of
    # its int8 grid; a range that clips shows as thousands (14,000 seen while building this)
    step = _logit_step(path / "model.tflite")
    np.testing.assert_allclose(got[0], expected[0], atol=step / 2 + 1e-6)
    assert np.abs(got - expected).max() / step <= {"int16x8": 128, "int8_static": 64}[mode]
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= {"int16x8": 1.0,
                                                              "int8_static": 0.85}[mode]


def test_bundle_expects_bos_first(bundle):
    mode, path, result = bundle
    runner = LLMRunner(path)
    assert runner.config["sink_prefix"] == [BOS] and runner.config["mode"] == mode
    with pytest.raises(TfcompressError, match=r"keeps the float keys and values of \[1\] at "
                                              r"positions 0..0 .*got \[5\] at position 0"):
        runner.logits([5, 9, 2])
    runner.reset()
    runner.prefill([BOS, 5, 9])  # BOS's row is computed, then replaced by its constants
    assert runner.position == 3
    if mode == "int16x8":  # verified on random ids after BOS: agreement measured 100 %
        assert result.agreement >= 0.85 and result.verified_on.startswith("16 random")


def test_sink_prefix_is_the_llama_prefix_cache(llama):
    prefix = sink_prefix(decoder_of(llama), BOS)
    for (keys, values), k, v in zip(prefix_cache(llama, [BOS]), prefix.keys, prefix.values,
                                    strict=True):
        # the bundle's layout (1, kv_heads, positions, head_dim) of the cache's
        np.testing.assert_allclose(k[0].transpose(1, 0, 2), keys, atol=1e-5)
        np.testing.assert_allclose(v[0].transpose(1, 0, 2), values, atol=1e-5)
    np.testing.assert_allclose(prefix.logits, np.asarray(llama(np.array([[BOS]])))[0, 0],
                               atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"special_tokens": None}, r"mode='int16x8' keeps BOS's keys and values float at "
                               r"position 0: give special_tokens=\{'bos': id\}"),
    ({"prefill_lengths": (8, 24)}, r"prefill_lengths must be below cache_length \(24\), got "
                                   r"\[8, 24\]"),
    ({"cache_buckets": (16,)}, r"give cache_buckets=None and kv_cache_dtype='float32', got "
                               r"\(16,\) and 'float32'"),
    ({"kv_cache_dtype": "float16"}, r"got None and 'float16'"),
    ({"calibration": np.array([[1, 64]])}, r"calibration must be token ids \(windows, n\) in "
                                           r"\[0, 64\)"),
])
def test_bad_arguments_are_refused_before_converting(llama, tmp_path, kwargs, match):
    args = {"prefill_lengths": (8,), "cache_length": 24, "special_tokens": {"bos": BOS},
            "mode": "int16x8", **kwargs}
    with mock.patch("tfcompress.export.llm._convert") as convert, pytest.raises(
            TfcompressError, match=match):
        export_llm(llama, tmp_path / "b", **args)
    convert.assert_not_called()
    assert not (tmp_path / "b").exists()
