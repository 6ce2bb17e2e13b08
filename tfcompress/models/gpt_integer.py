"""The same `build_gpt` model as a graph whose full-int8 export stays on XNNPACK's int8 kernels.

A full-int8 ``.tflite`` of `build_gpt` runs slower than its float file: LayerNormalization
converts to SQUARED_DIFFERENCE and RSQRT, the bounded attention mask to SELECT_V2 and
MAXIMUM, GELU to GELU, and none of those has an int8 XNNPACK kernel (LiteRT runs them on its
own, slower kernels between XNNPACK partitions). `integer_gpt` builds a model over the *same
variables* (nothing is copied or retrained) from ops XNNPACK runs in int8 (FULLY_CONNECTED,
MEAN, ADD, SUB, MUL, REDUCE_MAX/MIN, LOGISTIC, TRANSPOSE): the norm's variance as a MEAN of
a MUL, the causal mask as multiplications with a constant 0/1 matrix and a RELU floor (no
select), GELU as ``x * sigmoid(1.702 x)``. What is left outside XNNPACK: each norm's RSQRT
and epsilon ADD (one value per token), SOFTMAX, the two attention BATCH_MATMULs (activation
times activation) and the embedding's GATHER. The float graph differs from the model only by
the GELU approximation.

Those two matmuls are what keeps the int8 file slower than float on CPU: XNNPACK has no int8
kernel for an activation-times-activation BATCH_MATMUL (also with the delegate's latest
features). So the attention core (scores, mask, softmax, context) and each norm's
``rsqrt(variance + epsilon)`` are traced under the `FLOAT_ISLAND` name scope: export mode
``int8_islands`` keeps them float (DEQUANTIZE in, QUANTIZE out) and everything after the
embedding's GATHER runs in one XNNPACK partition. On the trained demo teacher (1 thread, 2
loaded AVX2 cores without VNNI, where XNNPACK's int8 matmuls are barely faster than its float
ones: dynamic_int8 and int8_mixed ran at 0.95-1.0x float32) int8 ran at 1.5-1.7x the float
file's latency, ``int8`` of this graph at 1.3-1.45x, ``int8_islands`` of it at 0.81-0.98x,
at 95.6 % agreement (`benchmarks.export`, rows ``int8_integer`` and ``int8_islands_integer``).

Example:
    >>> fast = integer_gpt(teacher)                 # the teacher's own variables
    >>> export_tflite(fast, "teacher.tflite", "int8_islands", representative_data=windows)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfcompress.models.attention import MASK_FLOOR
from tfcompress.models.gpt import gpt_config_of

# x * sigmoid(1.702 x): GELU within 0.021 everywhere (Hendrycks & Gimpel, 2016), from the
# LOGISTIC and MUL that XNNPACK runs in int8 (LiteRT's GELU op has no int8 XNNPACK kernel)
SIGMOID_GELU = 1.702
# the name scope of the ops export mode "int8_islands" leaves float
FLOAT_ISLAND = "float_island"


def sigmoid_gelu(x):
    """``x * sigmoid(1.702 x)``, the logistic approximation of GELU.

    Example:
        >>> float(sigmoid_gelu(keras.ops.convert_to_tensor(1.0)))   # GELU(1) = 0.8413
        0.8458...
    """
    return x * ops.sigmoid(SIGMOID_GELU * x)


def layer_norm(x, gamma, beta, epsilon: float):
    """LayerNormalization from MEAN, SUB and MUL (its variance is the mean of a square, not
    SQUARED_DIFFERENCE); one RSQRT per row."""
    centred = x - ops.mean(x, axis=-1, keepdims=True)
    variance = ops.mean(centred * centred, axis=-1, keepdims=True)
    with keras.name_scope(FLOAT_ISLAND):  # one value per row; no int8 XNNPACK RSQRT
        inverse = ops.rsqrt(variance + epsilon)
    return centred * inverse * gamma + beta


def causal_softmax(scores, floor: float = MASK_FLOOR):
    """Causal softmax over the last axis of ``scores (..., T, T)`` with no select and no large
    constant: every intermediate tensor stays within the scores' own range or ``[floor, 0]``.

    The row is shifted by its minimum (so masked entries multiplied by 0 sit at the bottom),
    then by the largest *kept* score, floored at ``floor`` through a RELU, and masked entries
    are set to ``floor`` by a constant 0/1 matrix: the softmax input lies in ``[floor, 0]``
    and a masked position weighs ``exp(floor)`` of the largest kept one.

    Example:
        >>> s = keras.ops.convert_to_tensor([[0.0, 5.0], [1.0, 2.0]])
        >>> keras.ops.convert_to_numpy(keras.ops.round(causal_softmax(s) * 1000)).tolist()
        [[1000.0, 0.0], [269.0, 731.0]]
    """
    length = scores.shape[-1]
    keep = ops.convert_to_tensor(np.tril(np.ones((length, length), "float32")))
    above_min = scores - ops.min(scores, axis=-1, keepdims=True)
    shifted = above_min - ops.max(above_min * keep, axis=-1, keepdims=True)
    return ops.softmax(ops.relu(shifted - floor) * keep + floor, axis=-1)


class IntegerGPT(keras.layers.Layer):
    """Token ids to logits with the weights of ``source`` (a `build_gpt` model), in the ops
    `integer_gpt` names; ``source``'s variables are this layer's variables."""

    def __init__(self, source: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.config = gpt_config_of(source)

    def _attention(self, h, mha):
        # EinsumDense (b, t, d) -> (b, t, heads, head_dim); scores per head (b, n, t, s).
        # Both matmuls read their right operand transposed (BATCH_MATMUL adj_y): LiteRT's
        # int8 kernel then skips transposing it on every call (~6 % of the teacher's time)
        head = mha.key_dim
        q = ops.transpose(mha.query_dense(h), (0, 2, 1, 3)) * ops.cast(head ** -0.5, h.dtype)
        k = ops.transpose(mha.key_dense(h), (0, 2, 1, 3))
        v = ops.transpose(mha.value_dense(h), (0, 2, 3, 1))
        with keras.name_scope(FLOAT_ISLAND):  # no int8 XNNPACK BATCH_MATMUL or SOFTMAX
            probs = causal_softmax(ops.einsum("bnth,bnsh->bnts", q, k))
            context = ops.einsum("bnts,bnhs->bnth", probs, v)
        return mha.output_dense(ops.transpose(context, (0, 2, 1, 3)))

    def _norm(self, x, name: str):
        ln = self.source.get_layer(name)
        return layer_norm(x, ln.gamma, ln.beta, ln.epsilon)

    def call(self, ids):
        get = self.source.get_layer
        x = get("position_embedding")(get("token_embedding")(ids))
        for i in range(self.config.n_layers):
            x = x + self._attention(self._norm(x, f"block{i}_ln1"), get(f"block{i}_attn"))
            mlp_in = get(f"block{i}_mlp_in")
            h = sigmoid_gelu(ops.matmul(self._norm(x, f"block{i}_ln2"), mlp_in.kernel)
                             + mlp_in.bias)
            x = x + get(f"block{i}_mlp_out")(h)
        x = self._norm(x, "final_norm")
        if self.config.tie_embeddings:
            return get("token_embedding")(x, reverse=True)
        return get("lm_head")(x)


def integer_gpt(model: keras.Model, seq_len: int | None = None) -> keras.Model:
    """A functional model over ``model``'s variables (a `build_gpt` model) whose full-integer
    export keeps norms, masking and GELU on XNNPACK's int8 kernels; see the module docstring.

    ``seq_len`` (default: the model's) fixes the traced window: the causal mask is a
    constant of that size. Raises `TfcompressError` for a model `build_gpt` did not make.
    """
    cfg = gpt_config_of(model)
    ids = keras.Input(shape=(seq_len or cfg.seq_len,), dtype="int32", name="token_ids")
    return keras.Model(ids, IntegerGPT(model, name="integer_gpt")(ids),
                       name=f"{model.name}_integer")
