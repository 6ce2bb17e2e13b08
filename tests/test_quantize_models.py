"""quantize / qat on Keras 3 models: storage, save/reload, nested layers, KerasHub, errors."""

import numpy as np
import pytest

import tfcompress  # noqa: F401  (sets the backend)
from tfcompress.core.layers import iter_layers, kernel_matrix, select_layers
from tfcompress.errors import TfcompressError
from tfcompress.models import build_gpt
from tfcompress.quantize import (
    QuantizeConfig,
    Quantizer,
    fake_quantize,
    is_quantized,
    qat,
    quantize,
    sensitivity,
    strip_qat,
)

INT4 = dict(bits=4, granularity="group", group_size=16)


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    return build_gpt("test-tiny")


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, 256, (8, 32)).astype("int32")


def test_rtn_codes_are_the_quantizer_codes_and_user_model_is_untouched(model, ids):
    before = [w.copy() for w in model.get_weights()]
    q = quantize(model, verbose=0, **INT4)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    layers = dict(iter_layers(q))
    assert is_quantized(layers["block0_attn/query"])  # nested in MultiHeadAttention
    assert is_quantized(layers["token_embedding"])
    w = kernel_matrix(dict(select_layers(model))["block0_mlp_out"])
    expected = Quantizer("affine", 4, "group", 16).roundtrip(w)
    got = np.asarray(layers["block0_mlp_out"].kernel)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_saved_int4_model_is_smaller_and_reloads_identically(model, ids, tmp_path):
    import keras

    q = quantize(model, verbose=0, **INT4)
    model.save(tmp_path / "float.keras")
    q.save(tmp_path / "int4.keras")
    # test-tiny: file overhead (config, HDF5 headers) dominates; the teacher reaches ~0.2
    assert (tmp_path / "int4.keras").stat().st_size < 0.65 * (tmp_path / "float.keras").stat(
    ).st_size
    again = keras.models.load_model(tmp_path / "int4.keras")
    np.testing.assert_array_equal(again(ids).numpy(), q(ids).numpy())
    assert is_quantized(dict(iter_layers(again))["block1_attn/value"])


def test_group_size_that_does_not_divide_the_input_saves_and_reloads(model, ids, tmp_path):
    import keras

    q = quantize(model, verbose=0, bits=4, granularity="group", group_size=24, ragged=True)
    layer = dict(iter_layers(q))["block0_mlp_out"]
    w = kernel_matrix(dict(select_layers(model))["block0_mlp_out"])
    assert w.shape[0] % 24  # the last group is shorter
    np.testing.assert_allclose(np.asarray(layer.kernel),
                               Quantizer("affine", 4, "group", 24, ragged=True).roundtrip(w),
                               atol=1e-6)
    q.save(tmp_path / "int4-g24.keras")
    again = keras.models.load_model(tmp_path / "int4-g24.keras")
    np.testing.assert_array_equal(again(ids).numpy(), q(ids).numpy())


def test_gptq_model_runs_and_beats_rtn_on_calibration_loss(model, ids):
    from tfcompress.models.training import lm_loss

    config = QuantizeConfig(method="gptq", bits=3, granularity="group", group_size=16,
                            types=("Dense", "EinsumDense"))
    gq = quantize(model, config, calibration=ids, verbose=0)
    rq = quantize(model, config, method="rtn", verbose=0)
    one_pass = quantize(model, config, calibration=ids, sequential=False, verbose=0)
    ref = model(ids).numpy()
    rtn_error = np.mean((rq(ids).numpy() - ref) ** 2)
    assert np.mean((gq(ids).numpy() - ref) ** 2) < rtn_error
    assert np.mean((one_pass(ids).numpy() - ref) ** 2) < rtn_error
    assert np.isfinite(float(lm_loss()(ids[:, 1:], gq(ids)[:, :-1])))


def test_nonlinear_schemes_store_and_decode(model, ids):
    for scheme, extra in (("kmeans", dict(granularity="channel")),
                          ("nf4", dict(granularity="group", group_size=16))):
        q = quantize(model, verbose=0, scheme=scheme, bits=4, **extra)
        layer = dict(iter_layers(q))["lm_head"]
        assert layer.tfc_codes.dtype == "uint8"
        assert np.abs(q(ids).numpy() - model(ids).numpy()).max() < 1.0


def test_quantized_model_exports_to_tflite(model, ids, tmp_path):
    from tfcompress.export import export_tflite

    q = quantize(model, verbose=0, **INT4)
    result = export_tflite(q, tmp_path / "q.tflite", seq_len=32, sample=ids[:2])
    assert result.agreement == 1.0


def test_keras_int8_mode_through_the_same_verb(model, ids):
    q = quantize(model, method="keras_int8", include=["block0_mlp_in"], verbose=0)
    layers = dict(iter_layers(q))
    assert layers["block0_mlp_in"].quantization_mode == "int8"
    assert layers["block0_mlp_out"].quantization_mode is None
    assert np.abs(q(ids).numpy() - model(ids).numpy()).max() < 0.1


def test_config_serializes():
    config = QuantizeConfig(method="gptq", include=("lm_head",), layer_bits={"lm_head": 8},
                            **INT4)
    assert QuantizeConfig.from_config(config.get_config()) == config


def test_mixed_bits_per_layer(model, ids):
    sens = sensitivity(model, ids, bits=(2, 8))
    assert all(s[2] > s[8] for s in sens.values())
    q = quantize(model, verbose=0, bits=4, layer_bits={"lm_head": 8})
    layers = dict(iter_layers(q))
    assert layers["lm_head"].tfc_settings["bits"] == 8 and layers["block0_mlp_in"].tfc_settings[
        "bits"] == 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=9), "bits must be an integer from 2 to 8"),
    (dict(granularity="group", group_size=48), "group_size=48 must divide"),
    (dict(include=["block0_ln1"]), "no layer matched"),
    (dict(types=("LayerNormalization",)), "cannot be quantized"),
    (dict(method="gptq"), "calibration is required"),
    (dict(layer_bits={"nope": 4}), "not selected"),
])
def test_bad_input_raises_before_work(model, kwargs, match):
    with pytest.raises(TfcompressError, match=match):
        quantize(model, verbose=0, **kwargs)


def test_empty_calibration_raises(model):
    with pytest.raises(TfcompressError, match="calibration is empty"):
        quantize(model, method="gptq", calibration=[], verbose=0)


def test_tf_keras_model_is_pointed_to_the_tfmot_path():
    with pytest.raises(TfcompressError, match="Keras 3 keras.Model"):
        quantize("not a model")
    tf_keras = pytest.importorskip("tf_keras")
    legacy = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])
    with pytest.raises(TfcompressError, match="use tfcompress.quantize.tfmot_quantize"):
        quantize(legacy)


@pytest.mark.parametrize("rows", [8, 10])  # 10 rows: groups of 4, 4 and 2
def test_fake_quantize_has_straight_through_gradient(rows):
    import tensorflow as tf

    w = tf.Variable(np.random.default_rng(0).normal(size=(rows, 3)).astype("float32"))
    c = tf.constant(np.random.default_rng(1).normal(size=(rows, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(fake_quantize(w, 4, 4) * c)
    np.testing.assert_allclose(tape.gradient(y, w).numpy(), c.numpy(), rtol=1e-6)
    np.testing.assert_allclose(fake_quantize(w, 4, 4).numpy(),
                               Quantizer("affine", 4, "group", 4, ragged=True).roundtrip(
                                   w.numpy()),
                               atol=1e-6)


def test_qat_trains_with_any_loss_and_strips_onto_the_grid(model, ids):
    import keras

    config = QuantizeConfig(**INT4)
    student = qat(model, config)
    kernel = dict(iter_layers(student))["block0_attn/key"]._kernel
    before = kernel.numpy().copy()
    student.compile(optimizer=keras.optimizers.SGD(0.1),
                    loss=lambda y, p: keras.ops.mean(keras.ops.square(p)))  # any loss
    student.fit(ids, ids, batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(kernel.numpy(), before)  # gradients reached the float weights
    stripped = strip_qat(student)
    w = kernel_matrix(dict(select_layers(stripped))["block0_mlp_in"])
    np.testing.assert_allclose(Quantizer("affine", 4, "group", 16).roundtrip(w), w, atol=1e-6)
    exact = quantize(stripped, config, verbose=0)
    np.testing.assert_allclose(exact(ids).numpy(), stripped(ids).numpy(), atol=1e-4)
    with pytest.raises(TfcompressError, match="no QAT layers"):
        strip_qat(stripped)


def test_kerashub_gpt2_backbone_quantizes(tiny_gpt2):
    backbone, x = tiny_gpt2()
    q = quantize(backbone, method="gptq", calibration=[x], verbose=0, bits=8,
                 types=("Dense", "EinsumDense"))
    quantized = [p for p, layer in iter_layers(q) if is_quantized(layer)]
    assert len(quantized) >= 6
    np.testing.assert_allclose(q(x).numpy(), backbone(x).numpy(), atol=0.05)
