"""The integer-friendly GPT graph: its pieces against their float definitions, the same
variables as the model, and a full-int8 export whose norms, mask and GELU stay on XNNPACK."""

import keras
import numpy as np
import pytest

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.errors import TfcompressError
from tfcompress.export.modes import in_scopes
from tfcompress.export.ops import inspect_tflite
from tfcompress.export.representative import representative_samples
from tfcompress.export.tflite import convert, input_spec
from tfcompress.models import build_gpt, build_llama
from tfcompress.models.gpt_integer import (
    FLOAT_ISLAND,
    causal_softmax,
    integer_gpt,
    layer_norm,
    sigmoid_gelu,
)
from tfcompress.models.llama import LlamaConfig


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_causal_softmax_equals_the_masked_softmax():
    rng = np.random.default_rng(0)
    scores = (4 * rng.standard_normal((2, 3, 6, 6))).astype("float32")
    z = np.where(np.tril(np.ones((6, 6), bool)), scores, -np.inf)
    expected = np.exp(z - z.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    # a masked position weighs exp(-16) of the largest kept one: 1e-7 per position
    np.testing.assert_allclose(_np(causal_softmax(scores)), expected, atol=1e-6)
    hand = _np(causal_softmax(np.array([[0.0, 5.0], [1.0, 2.0]], "float32")))
    np.testing.assert_allclose(hand, [[1.0, 0.0], [0.26894, 0.73106]], atol=1e-5)


def test_layer_norm_and_gelu_match_keras():
    rng = np.random.default_rng(1)
    x = (3 * rng.standard_normal((2, 5, 8)) + 1).astype("float32")
    ln = keras.layers.LayerNormalization(epsilon=1e-5)
    ln.build(x.shape)
    ln.gamma.assign(rng.standard_normal(8).astype("float32"))
    ln.beta.assign(rng.standard_normal(8).astype("float32"))
    np.testing.assert_allclose(_np(layer_norm(x, ln.gamma, ln.beta, 1e-5)), _np(ln(x)),
                               atol=2e-5)
    grid = np.linspace(-6, 6, 1201).astype("float32")
    gap = np.abs(_np(sigmoid_gelu(grid)) - _np(keras.activations.gelu(grid)))
    assert 0.015 < gap.max() < 0.021  # the logistic approximation's known worst gap
    assert float(_np(sigmoid_gelu(np.float32(1.0)))) == pytest.approx(1 / (1 + np.exp(-1.702)))


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return build_gpt("test-tiny", vocab_size=40, seq_len=16)


def test_integer_gpt_uses_the_models_own_variables(tiny):
    fast = integer_gpt(tiny)
    assert {id(v) for v in fast.weights} == {id(v) for v in tiny.weights}
    ids = np.random.default_rng(2).integers(0, 40, (2, 16)).astype("int32")
    expected, got = _np(tiny(ids)), _np(fast(ids))
    # only GELU differs (by <= 0.021 per unit): the logits move far less than they spread
    assert np.abs(got - expected).max() < 0.05 * expected.std()
    tiny.get_layer("lm_head").bias.assign(tiny.get_layer("lm_head").bias + 1.0)
    np.testing.assert_allclose(_np(fast(ids)), got + 1.0, atol=1e-5)  # one set of weights
    tiny.get_layer("lm_head").bias.assign(tiny.get_layer("lm_head").bias - 1.0)


def test_integer_gpt_full_int8_keeps_norms_mask_and_gelu_on_xnnpack(tiny):
    fast = integer_gpt(tiny)
    spec = input_spec(fast, None)
    samples = representative_samples(
        np.random.default_rng(3).integers(0, 40, (4, 16)).astype("int32"), spec)
    friendly = inspect_tflite(convert(fast, spec, "int8", samples)[0])
    # build_gpt's own int8 file also leaves GELU, SELECT_V2, MAXIMUM and SQUARED_DIFFERENCE
    # outside (results/export_int8.md); left here: each of the 5 norms' RSQRT and its epsilon
    # ADD (one value per token), SOFTMAX and the two activation matmuls per block, and the
    # embedding's GATHER with its negative-index check (LESS, SELECT on the int32 ids)
    assert friendly["not_delegated"] == {"ADD": 5, "BATCH_MATMUL": 4, "GATHER": 1, "LESS": 1,
                                         "RSQRT": 5, "SELECT": 1, "SOFTMAX": 2}
    assert set(friendly["float_ops"]) <= {"QUANTIZE", "DEQUANTIZE"}


def test_in_scopes_reads_numbered_and_fused_tensor_names():
    scopes = (FLOAT_ISLAND,)
    assert in_scopes("m/integer_gpt/float_island/Rsqrt", scopes)
    assert in_scopes("m/integer_gpt/float_island_12/MatMul", scopes)  # a repeated scope
    assert in_scopes("m/transpose;;m/float_island_3/einsum/transpose", scopes)  # fused
    assert not in_scopes("m/float_islands/MatMul", scopes)
    assert not in_scopes("m/my_float_island/MatMul", scopes)
    assert not in_scopes("m/float_island_x/MatMul", scopes)
    assert not in_scopes("m/float_island", scopes)  # the tensor, not an op inside the scope


def test_int8_islands_leave_only_attention_and_norm_roots_float(tiny):
    fast = integer_gpt(tiny)
    spec = input_spec(fast, None)
    samples = representative_samples(
        np.random.default_rng(3).integers(0, 40, (4, 16)).astype("int32"), spec)
    info = inspect_tflite(convert(fast, spec, "int8_islands", samples)[0])
    # outside XNNPACK only the embedding's GATHER with its negative-index check and the
    # position embedding's int32 ADD (as in the float file): one partition for the rest
    assert info["not_delegated"] == {"ADD": 1, "GATHER": 1, "LESS": 1, "SELECT": 1}
    assert info["xnnpack_partitions"] == 1
    floats = info["float_ops"]
    # per block: the two attention matmuls and the softmax; per norm (2 a block + the
    # final one): its RSQRT and epsilon ADD
    assert (floats["BATCH_MATMUL"], floats["SOFTMAX"], floats["RSQRT"]) == (4, 2, 5)
    assert not {"FULLY_CONNECTED", "MEAN", "LOGISTIC", "GATHER"} & set(floats)


def test_integer_gpt_refuses_other_models():
    llama = build_llama(LlamaConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2,
                                    n_kv_heads=1, d_ff=8))
    with pytest.raises(TfcompressError, match="was not made by build_gpt"):
        integer_gpt(llama)
