"""Small serializable layers used by the GPT builder."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfcompress")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position to a ``(batch, seq, d)`` input.

    Example:
        >>> tuple(PositionEmbedding(max_length=8)(keras.ops.zeros((2, 4, 3))).shape)
        (2, 4, 3)
    """

    def __init__(self, max_length: int, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=(self.max_length, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, x):
        length = ops.shape(x)[1]
        return x + ops.expand_dims(self.position_embeddings[:length], 0)

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length}


@keras.saving.register_keras_serializable(package="tfcompress")
class TiedEmbedding(keras.layers.Embedding):
    """An embedding that also projects hidden states back to vocabulary logits.

    ``layer(ids)`` embeds; ``layer(h, reverse=True)`` returns ``h @ embeddings.T``.
    """

    def call(self, inputs, reverse: bool = False):
        if reverse:
            return ops.matmul(inputs, ops.transpose(ops.convert_to_tensor(self.embeddings)))
        return super().call(inputs)

    def compute_output_spec(self, inputs, reverse: bool = False):
        if reverse:
            return keras.KerasTensor((*inputs.shape[:-1], self.input_dim), dtype=self.compute_dtype)
        return super().compute_output_spec(inputs)


@keras.saving.register_keras_serializable(package="tfcompress")
class HadamardRotation(keras.layers.Layer):
    """``x @ hadamard(n) / sqrt(n)`` over the last axis (``n`` its width), as a few small
    Kronecker-factor matmuls (`tfcompress.core.hadamard.kron_matmul`); no weights. The online
    rotation before a Llama MLP's down projection (`build_llama`'s ``mlp_hadamard``).

    Example:
        >>> HadamardRotation()(keras.ops.ones((1, 2, 4)))[0, 0].numpy()    # [1, 1, 1, 1] @ H / 2
        array([2., 0., 0., 0.], dtype=float32)
    """

    def build(self, input_shape):
        from tfcompress.core.hadamard import hadamard_factors

        self.factors = hadamard_factors(int(input_shape[-1]))
        if self.factors is None:
            raise ValueError(f"no Hadamard matrix of order {input_shape[-1]} (Sylvester 2^k "
                             "times a Paley order q + 1, q a prime = 3 mod 4)")

    def call(self, x):
        from tfcompress.core.hadamard import kron_matmul

        shape = ops.shape(x)
        y = kron_matmul(ops.reshape(x, (-1, shape[-1])), self.factors, ops)
        return ops.reshape(ops.cast(y, x.dtype), shape)
