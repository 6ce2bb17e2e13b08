"""Tiny token-id models of the three Keras kinds and a layer class of a user's own, for
tests/test_saving.py (imported by its fresh loading process too, as a user imports theirs)."""

from __future__ import annotations

import keras
import numpy as np

from tfcompress.core.layers import register_layer

VOCAB, SEQ, WIDTH = 32, 8, 16


@keras.saving.register_keras_serializable(package="tests_saving")
class SubLM(keras.Model):
    """A subclassed model: its layers are attributes, built by ``__init__``, not its config."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tok = keras.layers.Embedding(VOCAB, WIDTH, name="tok")
        self.up = keras.layers.Dense(2 * WIDTH, activation="relu", name="up")
        self.head = keras.layers.Dense(VOCAB, name="head")

    def call(self, ids):
        return self.head(self.up(self.tok(ids)))


@keras.saving.register_keras_serializable(package="tests_saving")
class MyDense(keras.layers.Layer):
    """A user's dense layer whose weight is ``w`` (not ``kernel``)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1], self.units))
        self.b = self.add_weight(name="b", shape=(self.units,), initializer="zeros")

    def call(self, x):
        return keras.ops.matmul(x, self.w) + self.b

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def functional(seed: int = 0) -> keras.Model:
    """Embedding, MultiHeadAttention (nested EinsumDense), Dense layers, a user's MyDense."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, WIDTH, name="tok")(ids)
    x = x + keras.layers.MultiHeadAttention(2, WIDTH // 2, name="attn")(x, x)
    x = MyDense(WIDTH, name="mine")(x)
    x = keras.layers.Dense(2 * WIDTH, activation="relu", name="up")(x)
    return keras.Model(ids, keras.layers.Dense(VOCAB, name="head")(x), name="functional")


def sequential(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((SEQ,), dtype="int32"),
                             keras.layers.Embedding(VOCAB, WIDTH, name="tok"),
                             keras.layers.Dense(2 * WIDTH, activation="relu", name="up"),
                             keras.layers.Dense(VOCAB, name="head")], name="sequential")


def subclassed(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = SubLM(name="subclassed")
    model(np.zeros((1, SEQ), "int32"))
    return model


def ids(rows: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (rows, SEQ)).astype("int32")


register_layer(MyDense, weight="w", like="Dense", methods=("prune", "quantize", "qat"))
