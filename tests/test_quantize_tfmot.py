"""TF-MOT path for tf.keras models and int8 TFLite export."""

import numpy as np
import pytest

import tfcompress  # noqa: F401
from tfcompress.errors import TfcompressError
from tfcompress.export import export_tflite
from tfcompress.quantize import tfmot_path


@pytest.fixture(scope="module")
def transformer():
    import tf_keras as K

    ids = K.Input((16,), dtype="int32")
    x = K.layers.Embedding(64, 16)(ids)
    h = K.layers.LayerNormalization()(x)
    h = K.layers.MultiHeadAttention(2, 8)(h, h)
    x = K.layers.Add()([x, h])
    x = K.layers.Dense(32, activation="relu", name="mlp")(x)
    return K.Model(ids, K.layers.Dense(64, name="head")(x))


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, 64, (8, 16)).astype("int32")


def test_transformer_quantizes_its_dense_layers_and_exports_int8(transformer, ids, tmp_path):
    import tf_keras as K

    q = tfmot_path.tfmot_quantize(transformer)
    kinds = {layer.name: type(layer).__name__ for layer in q.layers}
    assert kinds["quant_mlp"] == "QuantizeWrapperV2" and kinds["quant_head"] == "QuantizeWrapperV2"
    assert "MultiHeadAttention" in kinds.values()  # left float, not a crash
    before = [w.copy() for w in transformer.get_weights()]
    q.compile("adam", K.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(ids, ids, epochs=1, verbose=0)
    for a, b in zip(before, transformer.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the user's model is untouched
    # an untrained model has near-flat logits, so int8 flips some argmaxes
    result = export_tflite(q, tmp_path / "q.tflite", "int8", 16, calibration=ids,
                           sample=ids, max_abs_error=1.0, min_agreement=0.6)
    assert result.qat and result.input_dtype == "int32"
    assert np.isfinite(result.max_abs_error)


def test_clustering_leaves_n_distinct_weights(transformer, ids):
    import tf_keras as K

    c = tfmot_path.tfmot_cluster(transformer, clusters=8)
    c.compile("adam", K.losses.SparseCategoricalCrossentropy(from_logits=True))
    c.fit(ids, ids, epochs=1, verbose=0)
    stripped = tfmot_path.tfmot_strip_clustering(c)
    assert len(np.unique(stripped.get_layer("head").get_weights()[0])) <= 8


def test_bad_input(transformer):
    with pytest.raises(TfcompressError, match="cannot quantize"):
        tfmot_path.tfmot_quantize(transformer, include=["layer_normalization"])
    with pytest.raises(TfcompressError, match="clusters must be from 2 to 256"):
        tfmot_path.tfmot_cluster(transformer, clusters=1)
    from tfcompress.models import build_gpt

    with pytest.raises(TfcompressError, match="Keras 3 model; this TF-MOT path"):
        tfmot_path.tfmot_quantize(build_gpt("test-tiny"))
