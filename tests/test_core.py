"""Shared plumbing: layer selection, kernel views, model copies, input capture."""

import keras
import numpy as np
import pytest

from tfcompress.core import (
    capture_inputs,
    copy_model,
    input_axes,
    kernel_matrix,
    matrix_shape,
    require_keras3,
    require_tf_keras,
    select_layers,
    set_kernel_matrix,
)
from tfcompress.errors import TfcompressError
from tfcompress.models import build_gpt


@pytest.fixture(scope="module")
def gpt():
    return build_gpt("test-tiny")


def test_select_by_type_and_regex_reaches_nested_attention(gpt):
    paths = [p for p, _ in select_layers(gpt, types=("EinsumDense",), include=r"^block1")]
    assert sorted(paths) == sorted(
        f"block1_attn/{n}" for n in ("query", "key", "value", "attention_output")
    )
    names = [p for p, _ in select_layers(gpt, include=["lm_head", "block0_mlp_in"])]
    assert sorted(names) == ["block0_mlp_in", "lm_head"]
    dense = select_layers(gpt, types=("Dense",), exclude=r"lm_head")
    assert len(dense) == 4


def test_select_nothing_raises_with_the_available_layers(gpt):
    with pytest.raises(TfcompressError, match="no layer matched.*block0_mlp_in"):
        select_layers(gpt, include="decoder")


def test_kernel_matrix_views_einsum_kernels(gpt):
    attn = gpt.get_layer("block0_attn")
    assert input_axes(attn._query_dense) == 1 and input_axes(attn._output_dense) == 2
    assert kernel_matrix(attn._query_dense).shape == (32, 32)
    for layer in (attn._query_dense, attn._output_dense, gpt.get_layer("block0_mlp_in")):
        assert matrix_shape(layer) == kernel_matrix(layer).shape
    out = attn._output_dense
    before = kernel_matrix(out)
    set_kernel_matrix(out, before * 2)
    np.testing.assert_allclose(kernel_matrix(out), before * 2)
    set_kernel_matrix(out, before)


def test_capture_matches_layer_inputs(gpt):
    x = np.random.default_rng(0).integers(0, 256, (2, 32))
    layer = gpt.get_layer("block1_mlp_out")
    captured = capture_inputs(gpt, [layer, gpt.get_layer("block1_attn")._output_dense], x)
    probe = keras.Model(gpt.inputs, gpt.get_layer("block1_mlp_in").output)
    np.testing.assert_allclose(captured["block1_mlp_out"], probe(x).numpy().reshape(-1, 128),
                               atol=1e-5)
    assert captured["block1_attn/attention_output"].shape == (64, 32)
    assert layer.call.__func__ is type(layer).call  # the patch is removed
    with pytest.raises(TfcompressError, match="calibration is empty"):
        capture_inputs(gpt, [layer], [])


def test_copy_is_independent(gpt):
    clone = copy_model(gpt)
    x = np.arange(32)[None]
    np.testing.assert_allclose(clone(x), gpt(x))
    clone.get_layer("lm_head").kernel.assign(np.zeros((32, 256)))
    assert np.abs(gpt.get_layer("lm_head").kernel.numpy()).sum() > 0


def test_copy_of_a_subclassed_model():
    @keras.saving.register_keras_serializable(package="tests")
    class Tiny(keras.Model):
        def __init__(self, units=3, **kw):
            super().__init__(**kw)
            self.units = units
            self.inner = keras.layers.Dense(units)

        def call(self, x):
            return self.inner(x)

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    model = Tiny()
    model(np.ones((1, 2)))
    clone = copy_model(model)
    np.testing.assert_allclose(clone(np.ones((1, 2))), model(np.ones((1, 2))))
    assert clone.inner is not model.inner


def test_model_kind_checks_point_to_the_other_path(gpt):
    import tf_keras

    legacy = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])
    with pytest.raises(TfcompressError, match="tf.keras .* use prune_tfmot"):
        require_keras3(legacy, legacy_hint="prune_tfmot")
    with pytest.raises(TfcompressError, match="Keras 3 model.* use prune"):
        require_tf_keras(gpt, native_hint="prune")
    with pytest.raises(TfcompressError, match="must be a Keras 3 keras.Model, got int"):
        require_keras3(3)
