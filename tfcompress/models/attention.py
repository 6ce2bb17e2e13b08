"""Masked softmax whose every intermediate tensor stays within the attention scores' range.

The usual masked softmax writes -1e9 (or -inf) into masked positions before the softmax. In a
full-integer model each tensor gets one scale for all its values, so a tensor holding -1e9 next
to O(1) scores rounds every real score to the same integer: attention becomes uniform and the
model's output is noise (int16 activations fail the same way). `bounded_masked_softmax` gives
the same probabilities without any large constant: masked scores are replaced by the row's own
minimum, the row is shifted so its largest kept score is 0 and floored at ``floor``, and masked
positions sit exactly at the floor, so the softmax input always lies in ``[floor, 0]``.

Example:
    >>> s = keras.ops.convert_to_tensor([[1.0, 2.0, 3.0]])
    >>> m = keras.ops.convert_to_tensor([[True, True, False]])
    >>> keras.ops.round(bounded_masked_softmax(s, m) * 1000).numpy()  # softmax([1, 2]): .269, .731
    array([[269., 731.,   0.]], dtype=float32)
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

# exp(-16) = 1.1e-7: a masked position's weight relative to the largest kept one, so even a
# row of 4,096 masked positions moves the kept probabilities by < 0.05 %, while an int8 scale
# over [-16, 0] still resolves scores to 1/16.
MASK_FLOOR = -16.0


def bounded_masked_softmax(scores, mask, axis: int = -1, floor: float = MASK_FLOOR):
    """Softmax of ``scores`` over positions where ``mask`` is true; masked outputs are 0.

    Equal to the -1e9 formulation up to ``exp(floor)`` per masked position; fully masked rows
    give zeros (as `keras.layers.Softmax` does).
    """
    if ops.dtype(mask) != "bool":
        mask = ops.greater(mask, 0.5)
    low = ops.min(scores, axis=axis, keepdims=True)
    kept = ops.where(mask, scores, low)
    shifted = ops.maximum(kept - ops.max(kept, axis=axis, keepdims=True), floor)
    shifted = ops.where(mask, shifted, ops.cast(floor, shifted.dtype))
    return ops.softmax(shifted, axis=axis) * ops.cast(mask, scores.dtype)


def bounded_dot_product_attention(query, key, value, bias=None, mask=None, scale=None,
                                  is_causal: bool = False):
    """`keras.ops.dot_product_attention` (``(B, T, N, H)`` inputs) with `bounded_masked_softmax`."""
    scale = float(query.shape[-1]) ** -0.5 if scale is None else scale
    logits = ops.einsum("btnh,bsnh->bnts", query, key) * ops.cast(scale, query.dtype)
    if bias is not None:
        logits = logits + ops.cast(bias, logits.dtype)
    keep = None if mask is None else ops.cast(mask, "bool")
    if is_causal:
        causal = ops.tril(ops.ones((ops.shape(logits)[2], ops.shape(logits)[3]), "bool"))
        keep = causal[None, None] if keep is None else ops.logical_and(keep, causal[None, None])
    probs = ops.softmax(logits, -1) if keep is None else bounded_masked_softmax(logits, keep)
    return ops.einsum("bnts,bsnh->btnh", ops.cast(probs, value.dtype), value)


@contextlib.contextmanager
def bounded_attention_masks():
    """Within the block, Keras attention masks its scores with `bounded_masked_softmax`.

    Covers `keras.ops.dot_product_attention` (what `MultiHeadAttention` calls) and every
    `keras.layers.Softmax` called with a mask (KerasHub's attention layers), and likewise
    ``tf_keras.layers.Softmax`` (what tf.keras ``MultiHeadAttention`` masks with, in float
    TF-MOT QAT models too). Used while tracing a model for an export with fixed activation
    ranges; the model itself is not changed.
    """
    from keras.src import ops as src_ops

    softmaxes = [keras.layers.Softmax]
    try:
        import tf_keras

        softmaxes.append(tf_keras.layers.Softmax)
    except ImportError:  # tf.keras is optional
        pass
    softmax_calls = [cls.call for cls in softmaxes]
    attention = src_ops.dot_product_attention

    def bounded(softmax_call):
        def call(self, inputs, mask=None):
            if mask is None or isinstance(self.axis, (tuple, list)) and len(self.axis) > 1:
                return softmax_call(self, inputs, mask=mask)
            axis = self.axis[0] if isinstance(self.axis, (tuple, list)) else self.axis
            return bounded_masked_softmax(inputs, mask, axis=axis)
        return call

    def dot_product_attention(query, key, value, bias=None, mask=None, scale=None,
                              is_causal=False, flash_attention=None, attn_logits_soft_cap=None):
        if flash_attention or attn_logits_soft_cap or query.shape[-2] != key.shape[-2]:
            return attention(query, key, value, bias=bias, mask=mask, scale=scale,
                             is_causal=is_causal, flash_attention=flash_attention,
                             attn_logits_soft_cap=attn_logits_soft_cap)
        return bounded_dot_product_attention(query, key, value, bias, mask, scale, is_causal)

    for cls, softmax_call in zip(softmaxes, softmax_calls, strict=True):
        cls.call = bounded(softmax_call)
    src_ops.dot_product_attention = keras.ops.dot_product_attention = dot_product_attention
    try:
        yield
    finally:
        for cls, softmax_call in zip(softmaxes, softmax_calls, strict=True):
            cls.call = softmax_call
        src_ops.dot_product_attention = keras.ops.dot_product_attention = attention
