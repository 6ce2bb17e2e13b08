"""Full-integer export: bounded attention masks, per-tensor diagnosis, integer op inventory."""

import keras
import numpy as np
import pytest

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.errors import TfcompressError
from tfcompress.export.diagnose import diagnose, reference_tflite, tensor_error
from tfcompress.export.ops import NPU_OPS, float_nodes, inspect_tflite
from tfcompress.export.representative import representative_samples
from tfcompress.export.tflite import convert, input_spec
from tfcompress.models import build_gpt
from tfcompress.models.attention import bounded_attention_masks, bounded_masked_softmax


def _reference_softmax(scores, mask):
    z = np.where(mask, scores, -np.inf)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_bounded_masked_softmax_equals_masked_softmax():
    rng = np.random.default_rng(0)
    scores = (3 * rng.standard_normal((2, 3, 6, 6))).astype("float32")
    mask = np.tril(np.ones((6, 6), bool))[None, None] & (rng.random((2, 1, 1, 6)) > 0.2)
    mask[..., 0] = True  # every row keeps a position
    got = keras.ops.convert_to_numpy(bounded_masked_softmax(scores, mask))
    np.testing.assert_allclose(got, _reference_softmax(scores, mask), atol=2e-6)
    assert (got[~np.broadcast_to(mask, got.shape)] == 0).all()
    # the docstring's hand example: softmax([1, 2]) = (0.2689, 0.7311)
    hand = bounded_masked_softmax(np.array([[1.0, 2.0, 3.0]], "float32"),
                                  np.array([[True, True, False]]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(hand), [[0.26894, 0.73106, 0]],
                               atol=1e-5)
    none_kept = bounded_masked_softmax(np.ones((1, 3), "float32"), np.zeros((1, 3), bool))
    assert (keras.ops.convert_to_numpy(none_kept) == 0).all()  # as keras.layers.Softmax


def test_bounded_masks_keep_logits_and_restore_keras(tiny_gpt2):
    original = keras.ops.dot_product_attention, keras.layers.Softmax.call
    gpt = build_gpt("test-tiny", vocab_size=40)
    backbone, inputs = tiny_gpt2(seq_len=8)
    ids = np.random.default_rng(1).integers(0, 40, (2, 16)).astype("int32")
    expected = [keras.ops.convert_to_numpy(m(x)) for m, x in ((gpt, ids), (backbone, inputs))]
    with bounded_attention_masks():
        got = [keras.ops.convert_to_numpy(m(x)) for m, x in ((gpt, ids), (backbone, inputs))]
        assert keras.ops.dot_product_attention is not original[0]
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)
    assert (keras.ops.dot_product_attention, keras.layers.Softmax.call) == original


def test_bounded_masks_cover_tf_keras_softmax():
    """tf.keras MultiHeadAttention (TF-MOT QAT models) masks in tf_keras.layers.Softmax."""
    tf_keras = pytest.importorskip("tf_keras")
    original = tf_keras.layers.Softmax.call
    rng = np.random.default_rng(0)
    scores = (3 * rng.standard_normal((2, 6, 6))).astype("float32")
    mask = np.tril(np.ones((6, 6), bool))[None]
    expected = tf_keras.layers.Softmax()(scores, mask).numpy()
    with bounded_attention_masks():
        assert tf_keras.layers.Softmax.call is not original
        got = tf_keras.layers.Softmax()(scores, mask).numpy()
    assert tf_keras.layers.Softmax.call is original
    np.testing.assert_allclose(got, expected, atol=2e-6)
    np.testing.assert_allclose(got, _reference_softmax(scores, mask), atol=2e-6)


class NaiveAttention(keras.layers.Layer):
    """Causal self-attention masked by adding -1e9 itself (no Softmax layer to bound)."""

    def call(self, x):
        ops, steps = keras.ops, x.shape[1]
        scores = ops.einsum("btd,bsd->bts", x, x)
        causal = ops.tril(ops.ones((steps, steps)))
        return ops.einsum("bts,bsd->btd", ops.softmax(scores + (1.0 - causal) * -1e9), x)


def test_failed_int8_verification_names_the_layer_that_breaks_it(tmp_path):
    from tfcompress.errors import VerificationError
    from tfcompress.export import export_tflite

    keras.utils.set_random_seed(0)
    ids = keras.Input((8,), dtype="int32")
    # unit-scale embeddings: attention is far from uniform, so losing the scores shows
    init = keras.initializers.RandomNormal(stddev=1.0)
    x = keras.layers.Embedding(32, 16, embeddings_initializer=init, name="tok")(ids)
    x = x + NaiveAttention(name="naive_attention")(x)
    model = keras.Model(ids, keras.layers.Dense(32, name="head")(x), name="naive")
    data = np.random.default_rng(0).integers(0, 32, (16, 8)).astype("int32")
    with pytest.raises(VerificationError, match=r"first op that breaks it .*: BATCH_MATMUL in "
                       r"`naive\w*/naive_attention\w*/einsum` .* scale [0-9.]+e\+06"):
        export_tflite(model, tmp_path / "m.tflite", "int8", 8, calibration=data,
                      sample=data[:4], verbose=False)


def test_tensor_error_by_hand():
    # scale 0.5, zero point 0: int8 holds [-64, 63.5]; 100 is clipped to 63.5
    stats = tensor_error(np.array([0.0, 0.5, 1.0, 100.0]), np.array([0, 1, 2, 127]), 0.5, 0,
                         np.int8)
    assert stats["representable"] == (-64.0, 63.5)
    assert stats["observed"] == (0.0, 100.0)
    assert stats["clipped"] == 0.25
    expected = np.sqrt((100 - 63.5) ** 2 / 4) / np.std([0.0, 0.5, 1.0, 100.0])
    assert stats["relative_error"] == pytest.approx(expected)


def test_float_nodes_by_hand():
    nodes = [{"inputs": [0], "outputs": [1]}, {"inputs": [1, -1], "outputs": [2]},
             {"inputs": [2], "outputs": [3]}]
    dtypes = {0: np.float32, 1: np.int8, 2: np.int8, 3: np.float32}
    assert float_nodes(nodes, dtypes) == [True, False, True]


def _int8_file(model, spec, samples, path, bounded):
    content, _, _ = convert(model, spec, "int8", samples, bounded_masks=bounded)
    path.write_bytes(content)
    return path


def test_diagnose_points_at_the_unbounded_attention_mask(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_gpt("test-tiny", vocab_size=40, seq_len=16)
    ids = np.random.default_rng(0).integers(0, 40, (12, 16)).astype("int32")
    spec = input_spec(model, 16)
    samples = representative_samples(ids[:8], spec)
    reference = reference_tflite(model, 16)
    broken = diagnose(model, _int8_file(model, spec, samples, tmp_path / "a.tflite", False),
                      ids[8:], seq_len=16, reference=reference)
    first = broken.first_broken()
    assert "attn" in first.tensor and first.representable[0] < -1e30
    fixed = diagnose(model, _int8_file(model, spec, samples, tmp_path / "b.tflite", True),
                     ids[8:], seq_len=16, reference=reference)
    assert max(max(abs(a), abs(b)) for r in fixed.rows for a, b in [r.representable]) < 1e3
    assert max(r.relative_error for r in fixed.rows) < 0.5
    assert fixed.agreement > broken.agreement
    assert first.op in broken.to_markdown(3)
    assert broken.plot().axes[0].get_ylabel() == "error / float std"

    info = inspect_tflite(tmp_path / "b.tflite")
    assert not {"FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX"} & set(info["float_ops"])
    assert inspect_tflite(reference)["float_ops"]["FULLY_CONNECTED"] == 2 * 6 + 1
    assert "BATCH_MATMUL" in info["outside_npu"] and "FULLY_CONNECTED" not in info["outside_npu"]
    assert not set(info["outside_npu"]) & NPU_OPS


def test_diagnose_refuses_a_missing_file(tmp_path):
    model = build_gpt("test-tiny", vocab_size=40, seq_len=16)
    with pytest.raises(TfcompressError, match="tflite_path .* is not a .tflite file"):
        diagnose(model, tmp_path / "none.tflite", np.zeros((1, 16), "int32"))
