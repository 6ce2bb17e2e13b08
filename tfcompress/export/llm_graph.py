"""A decoder-only LM as plain arrays plus a cached forward pass in TensorFlow ops.

`decoder_of` reads a Keras LM into a `Decoder` through the adapter registered for its class
(`tfcompress.models.decoders`: our `build_gpt`/`build_llama`, KerasHub's GPT-2, Llama,
Llama3, Mistral, Qwen2, Qwen3, Gemma, Gemma3, Phi3, SmolLM3, and any user-registered
decoder): its shape, flags and every weight as a NumPy array (quantized layers decoded,
low-rank layers kept as their two factors). `cached_forward` runs ``n`` new tokens at
positions ``input_pos`` against a key/value cache of fixed length, the computation behind the
``prefill`` and ``decode`` signatures of `export_llm`: one copy of the maths for every family.

Example:
    >>> dec = decoder_of(model)
    >>> logits, caches = cached_forward(dec, weights, tokens, input_pos, caches)
"""

from __future__ import annotations

import numpy as np

from tfcompress.core.hadamard import hadamard_factors, kron_matmul
from tfcompress.models.attention import MASK_FLOOR
from tfcompress.models.decoders import Decoder, Rope, read_decoder

__all__ = ["HADAMARD_SCOPE", "HEAD_SCOPE", "CacheStep", "Decoder", "cached_forward", "decoder_of",
           "linear_scope"]

# name scope of the output head in the traced graph (a quantization recipe picks it by name)
HEAD_SCOPE = "lm_head"
# name scope of the online Hadamard's small matmuls: float in the int4 mode (no int4 block
# fits them), integer in the full-integer ones
HADAMARD_SCOPE = "tfc_online_hadamard"


def decoder_of(model) -> Decoder:
    """Read ``model`` into a `Decoder` (weights copied out; the model is not changed).

    Raises `TfcompressError` for a model no registered adapter reads, saying how to
    register one (`tfcompress.models.register_decoder`).
    """
    return read_decoder(model)


# -- the cached forward pass (TensorFlow ops, traced once per signature) -------------------


def linear_scope(name: str) -> str:
    """The name scope of the `Decoder` linear map ``name`` in the traced graph: its
    FULLY_CONNECTED ops' outputs carry it, so a quantization recipe can pick one layer."""
    return f"tfc_{name.replace('.', '_')}"


def _apply(tf, weights: dict, name: str, x):
    with tf.name_scope(linear_scope(name)):
        for matrix in weights[f"{name}.w"]:
            x = tf.matmul(x, matrix)
    bias = weights.get(f"{name}.b")
    return x if bias is None else x + bias


def _rms(tf, x, scale, eps: float):
    # the constant scale multiplies first: a constant MUL right before a matmul is folded into
    # its weights by the converter, which would move them off a quantized grid
    # x * x, not SQUARE: LiteRT's integer recipes leave SQUARE float
    return x * scale * tf.math.rsqrt(tf.reduce_mean(x * x, -1, keepdims=True) + eps)


def _norm(tf, dec: Decoder, weights: dict, name: str, x):
    if dec.norm == "rms":
        return _rms(tf, x, weights[f"{name}.scale"], dec.norm_eps)
    mean = tf.reduce_mean(x, -1, keepdims=True)
    var = tf.reduce_mean(tf.square(x - mean), -1, keepdims=True)
    return (x - mean) * weights[f"{name}.scale"] * tf.math.rsqrt(var + dec.norm_eps) + \
        weights[f"{name}.bias"]


def _softcap(tf, x, cap: float | None):
    return x if cap is None else tf.tanh(x * (1.0 / cap)) * cap


def _activation(tf, name: str, x):
    if name == "silu":
        return tf.nn.silu(x)
    return tf.nn.gelu(x, approximate=name == "gelu_tanh")


def _rope_lookup(tf, rope: Rope, input_pos, cache_len: int):
    """``(cos, sign * sin)`` of shape (n, 1, rotary_dim) at ``input_pos`` gathered from
    constant tables of ``cache_len`` positions, ``sign`` -1 on the first half (what an
    integer graph uses: no COS, SIN or NEG, which would stay float; `CacheStep.rotate`).
    Phi3's two frequency sets are computed as in `_rope_tables`, their sin signed."""
    dim = 2 * len(rope.inv_freq)
    sign = np.where(np.arange(dim) < dim // 2, -1.0, 1.0)
    if rope.long_inv_freq is not None:
        cos, sin = _rope_tables(tf, rope, input_pos)
        return cos, sin * sign.astype(np.float32)
    angles = np.arange(cache_len, dtype=np.float64)[:, None] * np.asarray(rope.inv_freq)[None]
    angles = np.concatenate([angles, angles], -1)
    return tuple(tf.gather(np.asarray(t * rope.amplitude, np.float32), input_pos)[:, None, :]
                 for t in (np.cos(angles), sign * np.sin(angles)))


def _rope_tables(tf, rope: Rope, input_pos):
    """``(cos, sin)`` of shape (n, 1, rotary_dim) at ``input_pos``."""
    inv_freq = np.asarray(rope.inv_freq, np.float32)
    if rope.long_inv_freq is not None:  # Phi3 su: long factors once a call passes long_after
        inv_freq = tf.where(input_pos[-1] >= rope.long_after,
                            np.asarray(rope.long_inv_freq, np.float32), inv_freq)[None]
    else:
        inv_freq = inv_freq[None]
    angles = tf.cast(input_pos, tf.float32)[:, None] * inv_freq
    angles = tf.concat([angles, angles], -1)[:, None, :]
    cos, sin = tf.cos(angles), tf.sin(angles)
    if rope.amplitude != 1.0:
        cos, sin = cos * rope.amplitude, sin * rope.amplitude
    return cos, sin


def _mask_bias(tf, input_pos, cache_len: int, window: int | None, integer: bool = False):
    """0 where a query at ``input_pos`` sees a cache slot (causal, within ``window``), else
    -1e30 (``integer``: True where it sees it, for `_floor_masked_softmax`). A window at
    least the cache length never masks anything, so it adds no ops."""
    slots = tf.range(cache_len)[None, :]
    visible = slots <= input_pos[:, None]
    if window is not None and window < cache_len:
        visible = visible & (input_pos[:, None] - slots < window)
    return visible if integer else tf.where(visible, 0.0, -1e30)


def _floor_masked_softmax(tf, scores, visible):
    """Softmax over the ``visible`` scores of an integer graph: masked ones set to the row's
    smallest score less `MASK_FLOOR`'s 16 (each at most exp(-16) of the largest kept), so
    every tensor keeps a range calibration can fix (not -1e30), through REDUCE_MIN, which
    LiteRT's quantizer takes (REDUCE_MAX it leaves float). The masked weights are left in:
    below an int16 step of the probabilities.

    Example:
        >>> import tensorflow as tf
        >>> _floor_masked_softmax(tf, tf.constant([[1.0, 2.0, 9.0]]),
        ...                       tf.constant([[True, True, False]])).numpy().round(3)
        array([[0.269, 0.731, 0.   ]], dtype=float32)
    """
    low = tf.reduce_min(scores, -1, keepdims=True) + MASK_FLOOR
    return tf.nn.softmax(tf.where(visible, scores, low), -1)


class CacheStep:
    """One layer's view of its KV cache during a cached call (what a layer's cached call
    gets, built-in or user-registered): `rotate` applies the layer's RoPE, `write` puts the
    new keys/values into the cache, `attend` runs the masked attention over it.

    Example:
        >>> q, k = step.rotate(q), step.rotate(k)   # (n, heads, head_dim)
        >>> step.write(k, v)
        >>> out = step.attend(q)                      # (n, heads * head_dim)
    """

    def __init__(self, dec: Decoder, k_cache, v_cache, start, mask_bias, rope_tables,
                 prefix=None):
        self.dec, self.k_cache, self.v_cache = dec, k_cache, v_cache
        self._start, self.mask_bias, self._rope = start, mask_bias, rope_tables
        self._prefix = prefix  # (keys, values) (1, kv_heads, p, head_dim) kept at slots 0..p-1

    def rotate(self, x):
        """RoPE on ``x`` (n, heads, head_dim): the first rotary_dim features, halves rotated;
        unchanged in a layer without positions."""
        import tensorflow as tf

        if self._rope is None:
            return x
        cos, sin = self._rope
        dim = cos.shape[-1]
        rot = x if dim == self.dec.head_dim else x[..., :dim]
        half = dim // 2
        # an integer graph's sin table carries the first half's minus sign (`_rope_lookup`)
        high = rot[..., half:] if self._prefix is not None else -rot[..., half:]
        rotated = tf.concat([high, rot[..., :half]], -1)
        rot = rot * cos + rotated * sin
        return rot if dim == self.dec.head_dim else tf.concat([rot, x[..., dim:]], -1)

    def write(self, k, v) -> None:
        """Write ``k``, ``v`` (n, kv_heads, head_dim) at the call's positions, in place."""
        import tensorflow as tf
        from tensorflow.compiler.tf2xla.python import xla

        dtype = self.k_cache.dtype  # a 16-bit cache stores the keys/values rounded to it
        self.k_cache = xla.dynamic_update_slice(
            self.k_cache, tf.cast(tf.transpose(k, (1, 0, 2))[None], dtype), self._start)
        self.v_cache = xla.dynamic_update_slice(
            self.v_cache, tf.cast(tf.transpose(v, (1, 0, 2))[None], dtype), self._start)
        if self._prefix is not None:
            # the sink prefix's float keys/values replace whatever an integer graph made of
            # the token at positions 0..p-1 (see `tfcompress.export.llm_integer`)
            origin = tf.zeros(4, tf.int32)
            self.k_cache = xla.dynamic_update_slice(self.k_cache, self._prefix[0], origin)
            self.v_cache = xla.dynamic_update_slice(self.v_cache, self._prefix[1], origin)

    def attend(self, q, scale: float | None = None, softcap: float | None = None):
        """``q`` (n, heads, head_dim) against the cache -> (n, heads * head_dim); ``scale``
        defaults to ``head_dim ** -0.5``, ``softcap`` caps the scores (Gemma 2)."""
        import tensorflow as tf

        dec = self.dec
        n = tf.shape(q)[0]
        kv, group, hd = dec.n_kv_heads, dec.n_heads // dec.n_kv_heads, dec.head_dim
        # query head h uses KV head h // group: group query heads per KV head, no repeat of
        # K/V. The caches enter the 4-D matmuls as they are: slicing off their batch axis
        # would copy the whole cache every step outside XNNPACK (~1 ms per 1024 x 192 floats)
        q = tf.reshape(tf.transpose(tf.reshape(q, (n, kv, group, hd)), (1, 2, 0, 3)),
                       (1, kv, group * n, hd))
        scale = 1.0 / np.sqrt(hd) if scale is None else scale
        k_cache, v_cache = (tf.cast(c, q.dtype) for c in (self.k_cache, self.v_cache))
        scores = _softcap(tf, tf.matmul(q, k_cache, transpose_b=True) * scale, softcap)
        scores = tf.reshape(scores, (kv, group, n, -1))
        if self._prefix is None:
            probs = tf.nn.softmax(scores + self.mask_bias, -1)
        else:
            probs = _floor_masked_softmax(tf, scores, self.mask_bias)  # a bool mask
        probs = tf.reshape(probs, (1, kv, group * n, -1))
        out = tf.reshape(tf.matmul(probs, v_cache), (kv, group, n, hd))
        return tf.reshape(tf.transpose(out, (2, 0, 1, 3)), (n, dec.n_heads * hd))


def _layer(tf, dec: Decoder, weights: dict, i: int, x, step: CacheStep):
    """One pre-norm block of the shared maths (every built-in family)."""
    n = tf.shape(x)[0]
    h = _norm(tf, dec, weights, f"{i}.norm1", x)
    q = tf.reshape(_apply(tf, weights, f"{i}.q", h), (n, dec.n_heads, dec.head_dim))
    k = tf.reshape(_apply(tf, weights, f"{i}.k", h), (n, dec.n_kv_heads, dec.head_dim))
    v = tf.reshape(_apply(tf, weights, f"{i}.v", h), (n, dec.n_kv_heads, dec.head_dim))
    if f"{i}.q_norm.scale" in weights:  # Qwen3, Gemma3: per-head RMSNorm before RoPE
        q = _rms(tf, q, weights[f"{i}.q_norm.scale"], dec.norm_eps)
        k = _rms(tf, k, weights[f"{i}.k_norm.scale"], dec.norm_eps)
    q, k = step.rotate(q), step.rotate(k)
    step.write(k, v)
    att = _apply(tf, weights, f"{i}.out", step.attend(q, dec.query_scale, dec.attn_softcap))
    if f"{i}.post_attn_norm.scale" in weights:
        att = _norm(tf, dec, weights, f"{i}.post_attn_norm", att)
    x = x + att
    h = _norm(tf, dec, weights, f"{i}.norm2", x)
    if dec.gated:
        h = _activation(tf, dec.activation, _apply(tf, weights, f"{i}.gate", h)) * _apply(
            tf, weights, f"{i}.up", h)
    else:
        h = _activation(tf, dec.activation, _apply(tf, weights, f"{i}.up", h))
    if dec.mlp_hadamard:
        with tf.name_scope(HADAMARD_SCOPE):
            h = kron_matmul(h, hadamard_factors(int(h.shape[-1])), tf)
    h = _apply(tf, weights, f"{i}.down", h)
    if f"{i}.post_mlp_norm.scale" in weights:
        h = _norm(tf, dec, weights, f"{i}.post_mlp_norm", h)
    return x + h


def cached_forward(dec: Decoder, weights: dict, tokens, input_pos, k_caches: list,
                   v_caches: list, logits: bool = True, prefix=None):
    """Run ``tokens`` (1, n) at consecutive positions ``input_pos`` (n,) through the model.

    ``k_caches``/``v_caches`` hold one ``(1, kv_heads, cache_length, head_dim)`` tensor per
    layer (the layout LiteRT-LM reads its cache length from); the new keys/values are written
    at ``input_pos[0] .. input_pos[0] + n - 1`` and every query sees the cache up to its own
    position (within the layer's sliding window). Returns ``(logits (1, n, vocab) or None,
    new k caches, new v caches)``. ``weights`` maps `Decoder` names to tensors; the
    decoder's own callables (``embed``, ``layer``, ``final_norm``, ``head``) replace the
    shared maths of their part. ``prefix`` (a `tfcompress.export.llm_integer.SinkPrefix`)
    holds the cache's first slots and the logits at those positions at its float constants.
    """
    import tensorflow as tf

    cache_len = k_caches[0].shape[2]
    if dec.embed is not None:
        x = dec.embed(tokens[0], input_pos)
    else:
        x = tf.gather(weights["embed"], tokens[0])
        if dec.embed_scale is not None:
            x = x * dec.embed_scale
        if "pos_embed" in weights:
            x = x + tf.gather(weights["pos_embed"], input_pos)
    # one mask per window length and one cos/sin table per RoPE, shared by the layers; a
    # window the cache cannot exceed is no window
    windows = [w if w is not None and w < cache_len else None for w in dec.window]
    masks = {w: _mask_bias(tf, input_pos, cache_len, w, prefix is not None)
             for w in dict.fromkeys(windows)}
    tables = {r: _rope_lookup(tf, r, input_pos, cache_len) if prefix is not None
              else _rope_tables(tf, r, input_pos) for r in dict.fromkeys(dec.rope) if r}
    start = tf.stack([0, 0, input_pos[0], 0])
    new_k, new_v = [], []
    for i in range(dec.n_layers):
        step = CacheStep(dec, k_caches[i], v_caches[i], start, masks[windows[i]],
                         tables.get(dec.rope[i]),
                         None if prefix is None else (prefix.keys[i], prefix.values[i]))
        x = dec.layer(i, x, step) if dec.layer is not None else _layer(
            tf, dec, weights, i, x, step)
        new_k.append(step.k_cache)
        new_v.append(step.v_cache)
    if not logits:
        return None, new_k, new_v
    x = dec.final_norm(x) if dec.final_norm is not None else _norm(
        tf, dec, weights, "final_norm", x)
    if "final_mix.w" in weights:
        x = x + _apply(tf, weights, "final_mix", x)
    with tf.name_scope(HEAD_SCOPE):
        if dec.head is not None:
            out = dec.head(x)
        elif "head.w" in weights:
            out = _apply(tf, weights, "head", x)
        else:
            out = tf.matmul(x, weights["embed"], transpose_b=True)
    out = _softcap(tf, out, dec.final_softcap)
    if prefix is not None:
        out = tf.where(input_pos[:, None] < len(prefix.ids), prefix.logits[None], out)
    return out[None], new_k, new_v
