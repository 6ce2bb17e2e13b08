"""Activation smoothing (SmoothQuant): the scale and fold math on arrays, the streamed
max |x| statistic, and smoothed copies of tiny GPT and Llama models."""

import keras
import numpy as np
import pytest

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.core.stats import InputStats
from tfcompress.errors import TfcompressError
from tfcompress.export import export_tflite
from tfcompress.models import LlamaConfig, build_gpt, build_llama
from tfcompress.quantize import smooth, smoothing_groups, smoothing_scales
from tfcompress.quantize.smooth import fold_scales, weight_maxima


def test_smoothing_scales_by_hand():
    # s = act^a / w^(1-a): sqrt(4)/sqrt(1) = 2, sqrt(1)/sqrt(4) = 0.5, a dead channel keeps 1
    np.testing.assert_allclose(smoothing_scales([4.0, 1.0, 0.0], [1.0, 4.0, 2.0], 0.5),
                               [2.0, 0.5, 1.0])
    # a = 0.75: 16^0.75 / 1 = 8, 1 / 16^0.25 = 0.5
    np.testing.assert_allclose(smoothing_scales([16.0, 1.0], [1.0, 16.0], 0.75), [8.0, 0.5])
    # a = 0: s = 1 / max|W|; a zero weight row is clamped at 1e-5
    np.testing.assert_allclose(smoothing_scales([3.0, 3.0], [0.5, 0.0], 0.0), [2.0, 1e5])


def test_weight_maxima_and_fold_by_hand():
    a = np.array([[1.0, -3.0], [2.0, 0.0]])
    b = np.array([[0.5], [-4.0]])
    np.testing.assert_allclose(weight_maxima([a, b]), [3.0, 4.0])
    s = np.array([2.0, 0.5])
    gamma, beta, (fa, fb) = fold_scales(s, np.array([4.0, 1.0]), np.array([1.0, -1.0]), [a, b])
    np.testing.assert_allclose(gamma, [2.0, 2.0])
    np.testing.assert_allclose(beta, [0.5, -2.0])
    np.testing.assert_allclose(fa, [[2.0, -6.0], [1.0, 0.0]])
    np.testing.assert_allclose(fb, [[1.0], [-2.0]])
    assert fold_scales(s, np.ones(2))[1] is None  # RMSNorm has no beta
    # the fold leaves (x * gamma + beta) @ k unchanged
    x = np.random.default_rng(0).standard_normal((5, 2))
    np.testing.assert_allclose((x * gamma + beta) @ fa, (x * [4.0, 1.0] + [1.0, -1.0]) @ a)


def test_max_abs_statistic_equals_the_batch_formula():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((7, 5)) * [1, 10, 0.1, 3, 0] for _ in range(3)]
    stats = InputStats(5, needs=("max",))
    for x in batches:
        stats.update(x)
    expected = np.abs(np.concatenate(batches)).max(axis=0)
    np.testing.assert_allclose(stats.max_abs(), expected, rtol=1e-6)
    restored = InputStats.from_state(stats.state(), needs=("max",))
    np.testing.assert_allclose(restored.max_abs(), expected, rtol=1e-6)
    assert InputStats(5, needs=("sq",)).max is None  # kept only when asked for


def _tiny_llama():
    return build_llama(LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                                   n_kv_heads=2, d_ff=48))


@pytest.mark.parametrize("build, groups", [
    (lambda: build_gpt("test-tiny", vocab_size=64),
     {"block0_ln1": ["query", "key", "value"], "block0_ln2": ["block0_mlp_in"],
      "block1_ln1": ["query", "key", "value"], "block1_ln2": ["block1_mlp_in"],
      "final_norm": ["lm_head"]}),
    (_tiny_llama,  # the tied head reads final_norm through the embedding: left out
     {"block0_attn_norm": ["block0_attn_q", "block0_attn_k", "block0_attn_v"],
      "block0_mlp_norm": ["block0_mlp_gate", "block0_mlp_up"],
      "block1_attn_norm": ["block1_attn_q", "block1_attn_k", "block1_attn_v"],
      "block1_mlp_norm": ["block1_mlp_gate", "block1_mlp_up"]}),
], ids=["gpt", "llama"])
def test_smoothed_copy_computes_the_same_logits(build, groups):
    keras.utils.set_random_seed(0)
    model = build()
    found = {g.norm.name: [la.name for la in g.layers] for g in smoothing_groups(model)}
    assert found == groups
    # an outlier channel in the residual stream, as trained LMs have
    emb = model.get_layer("token_embedding")
    table = emb.embeddings.numpy()
    table[:, 3] *= 40.0
    emb.embeddings.assign(table)
    ids = np.random.default_rng(0).integers(0, 64, (6, 16)).astype("int32")
    before = [w.numpy().copy() for w in model.weights]
    expected = keras.ops.convert_to_numpy(model(ids))
    smoothed = smooth(model, ids, strength=0.5)
    got = keras.ops.convert_to_numpy(smoothed(ids))
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())
    for a, w in zip(before, model.weights, strict=True):  # the user's model is untouched
        np.testing.assert_array_equal(a, w.numpy())
    norm = next(iter(groups))
    assert not np.allclose(smoothed.get_layer(norm).weights[0].numpy(),
                           model.get_layer(norm).weights[0].numpy())


def test_smoothing_flattens_the_normalized_activation():
    """After the fold, the channels the q/k/v layers read have max |x_j| = sqrt(act * w)."""
    keras.utils.set_random_seed(1)
    model = _tiny_llama()
    ids = np.random.default_rng(1).integers(0, 64, (4, 16)).astype("int32")
    norm = model.get_layer("block0_attn_norm")
    norm.scale.assign(np.linspace(0.1, 30.0, 32).astype("float32"))
    smoothed = smooth(model, ids, strength=0.5)
    probe = [keras.Model(m.inputs, m.get_layer("block0_attn_norm").output) for m in
             (model, smoothed)]
    x0, x1 = (np.abs(keras.ops.convert_to_numpy(p(ids))).reshape(-1, 32).max(0) for p in probe)
    ratio = lambda v: v.max() / v.min()  # noqa: E731
    assert ratio(x1) < ratio(x0) / 5  # most of the 300x spread of gamma is gone
    w = np.concatenate([model.get_layer(f"block0_attn_{n}").kernel.numpy() for n in "qkv"], 1)
    np.testing.assert_allclose(x1, np.sqrt(x0 * np.abs(w).max(1)), rtol=1e-4)


@pytest.mark.parametrize("strength", [1.5, -0.1, "0.5", True])
def test_bad_strength_is_refused(strength):
    model = build_gpt("test-tiny", vocab_size=64)
    ids = np.zeros((2, 8), "int32")
    with pytest.raises(TfcompressError, match="strength.*migration strength.*got"):
        smooth(model, ids, strength=strength)
    with pytest.raises(TfcompressError, match="give strength only"):
        smooth(model, ids, strength=0.5, alpha=0.5)


def test_alpha_is_the_old_name_of_strength():
    model = build_gpt("test-tiny", vocab_size=64)
    ids = np.random.default_rng(0).integers(0, 64, (2, 8))
    with pytest.warns(FutureWarning, match="alpha= is deprecated.*use strength="):
        old = smooth(model, ids, alpha=0.3, verbose=0)
    new = smooth(model, ids, strength=0.3, verbose=0)
    for a, b in zip(old.get_weights(), new.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_export_refuses_bad_smoothing_before_converting(tmp_path):
    model = build_gpt("test-tiny", vocab_size=64)
    ids = np.zeros((4, 32), "int32")
    with pytest.raises(TfcompressError, match=r"smooth .*\[0, 1\].*got 2"):
        export_tflite(model, tmp_path / "m.tflite", "int8", seq_len=32, calibration=ids,
                      smooth=2)
    with pytest.raises(TfcompressError, match="smooth is only for .*'int8'.*not 'float32'"):
        export_tflite(model, tmp_path / "m.tflite", "float32", seq_len=32, smooth=0.5)
    assert not (tmp_path / "m.tflite").exists()


def test_model_without_foldable_norm_is_refused():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Dense(8)(inputs)))
    with pytest.raises(TfcompressError, match="nothing to smooth"):
        smooth(model, np.zeros((2, 8), "float32"))


def test_smoothed_int8_export_verifies_against_the_original(tmp_path):
    keras.utils.set_random_seed(0)
    model = _tiny_llama()
    ids = np.random.default_rng(0).integers(0, 64, (8, 16)).astype("int32")
    before = [w.numpy().copy() for w in model.weights]
    result = export_tflite(model, tmp_path / "m.tflite", "int8", seq_len=16,
                           calibration=ids, smooth=0.5, verbose=False)
    assert result.agreement >= 0.85  # verified against `model` by export_tflite itself
    for a, w in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(a, w.numpy())


def test_kerashub_decoders_are_smoothed_with_the_same_outputs(tiny_gpt2):
    backbone, inputs = tiny_gpt2(num_layers=2)
    groups = smoothing_groups(backbone)
    assert [(g.norm.name, len(g.layers)) for g in groups] == [
        ("self_attention_layer_norm", 3), ("feedforward_layer_norm", 1)] * 2
    layer_norm = backbone.get_layer("transformer_layer_0")._feedforward_layer_norm
    layer_norm.gamma.assign(np.linspace(0.1, 20, 16).astype("float32"))
    expected = keras.ops.convert_to_numpy(backbone(inputs))
    smoothed = smooth(backbone, inputs)
    got = keras.ops.convert_to_numpy(smoothed(inputs))
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())
    assert not np.allclose(
        smoothed.get_layer("transformer_layer_0")._feedforward_layer_norm.gamma.numpy(),
        layer_norm.gamma.numpy())


def test_kerashub_llama_decoders_are_smoothed_with_the_same_outputs():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=64, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32)
    groups = smoothing_groups(backbone)
    assert [(g.norm.name, len(g.layers)) for g in groups] == [
        ("self_attention_layernorm", 3), ("feedforward_layernorm", 2)]
    inputs = {"token_ids": np.random.default_rng(0).integers(0, 64, (2, 8)).astype("int32"),
              "padding_mask": np.ones((2, 8), "int32")}
    expected = keras.ops.convert_to_numpy(backbone(inputs))
    got = keras.ops.convert_to_numpy(smooth(backbone, inputs, verbose=0)(inputs))
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())
