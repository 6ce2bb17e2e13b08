"""Fixtures shared by several test modules."""

import numpy as np
import pytest


@pytest.fixture
def tiny_gpt2():
    """A factory for a small random KerasHub ``GPT2Backbone`` and one input batch
    (presets cannot be downloaded here)."""
    keras_hub = pytest.importorskip("keras_hub")

    def make(hidden_dim: int = 16, seq_len: int = 8, vocab: int = 64, seed: int = 0,
             num_layers: int = 1):
        import keras

        keras.utils.set_random_seed(seed)
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=vocab, num_layers=num_layers, num_heads=2, hidden_dim=hidden_dim,
            intermediate_dim=2 * hidden_dim, max_sequence_length=seq_len)
        ids = np.random.default_rng(seed).integers(0, vocab, (2, seq_len)).astype("int32")
        return backbone, {"token_ids": ids, "padding_mask": np.ones((2, seq_len), "int32")}

    return make
