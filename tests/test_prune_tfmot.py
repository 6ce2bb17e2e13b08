"""The TF-MOT path for tf.keras models and the errors between the two paths."""

import numpy as np
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.prune import PruneConfig, prune, prune_tf_keras, strip_tf_keras, tf_keras_callbacks


def tf_keras_model():
    import tf_keras

    class Scale(tf_keras.layers.Layer):  # a custom layer TF-MOT does not know
        def build(self, shape):
            self.scale = self.add_weight("scale", shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    tf_keras.utils.set_random_seed(0)
    x = tf_keras.Input((8,))
    h = tf_keras.layers.Dense(16, activation="relu", name="inner")(x)
    h = tf_keras.layers.Dense(8, name="back")(h)
    y = Scale(name="scale")(x + h)  # x + h becomes a TFOpLambda layer
    return tf_keras.Model(x, tf_keras.layers.Dense(4, name="head")(y))


def test_tf_keras_model_pruned_with_skip_report():
    model = tf_keras_model()
    original = [w.copy() for w in model.get_weights()]
    pruned, skipped = prune_tf_keras(model, PruneConfig(sparsity=0.5), exclude="head")
    assert "scale" in skipped and any("TFOpLambda" in v for v in skipped.values())
    pruned.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    pruned.fit(x, np.zeros((32, 4)), epochs=2, verbose=0, callbacks=tf_keras_callbacks())
    plain = strip_tf_keras(pruned)
    for name in ("inner", "back"):
        kernel = plain.get_layer(name).kernel.numpy()
        assert (kernel == 0).mean() == pytest.approx(0.5)
    assert (plain.get_layer("head").kernel.numpy() != 0).all()
    assert all(np.array_equal(a, b) for a, b in zip(original, model.get_weights(), strict=True))


def test_tf_keras_nm_pattern():
    pruned, _ = prune_tf_keras(tf_keras_model(), pattern="2:4", include="inner|back")
    pruned.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    pruned.fit(x, np.zeros((8, 4)), verbose=0, callbacks=tf_keras_callbacks())
    kernel = strip_tf_keras(pruned).get_layer("inner").kernel.numpy()
    assert ((kernel != 0).reshape(2, 4, 16).sum(axis=1) == 2).all()


def test_paths_point_to_each_other():
    from tfcompress.models import build_gpt

    with pytest.raises(TfcompressError, match="tf.keras .* use tfcompress.prune.prune_tf_keras"):
        prune(tf_keras_model())
    with pytest.raises(TfcompressError, match="Keras 3 model.* use tfcompress.prune.prune"):
        prune_tf_keras(build_gpt("test-tiny"))
    with pytest.raises(TfcompressError, match="TF-MOT prunes each layer by magnitude"):
        prune_tf_keras(tf_keras_model(), method="wanda")
    with pytest.raises(TfcompressError, match="no prunable layer matched"):
        prune_tf_keras(tf_keras_model(), include="nothing")
