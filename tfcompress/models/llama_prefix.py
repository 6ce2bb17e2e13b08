"""A Llama whose first tokens are a constant key/value prefix: the attention sink out of the graph.

A causal LM's first position sees only itself, so when every sequence starts with the same
token (BOS) its keys and values are the same constants at every layer. SmolLM2 parks a
"massive activation" there (about 2.4e4 in residual channel 507), which no per-tensor int8
or int16 scale holds next to the other tokens' values. `prefix_cache` computes those keys and
values once, in float; `prefixed_llama` is the model over positions ``len(prefix)...`` only
that attends to them as constants (PrefixQuant's idea), so a full-integer export of it never
sees the sink, and its activation ranges are calibrated on the user's text without it. Its
logits equal the full model's on ``prefix + ids`` (float rounding aside).

With ``float_islands=True`` the attention core and every RMSNorm are traced under the
`FLOAT_ISLAND` name scope: export modes ``int8_islands`` and ``int16x8_islands`` keep them
float.

Example:
    >>> llama = build_llama(LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4,
    ...                                 n_kv_heads=2, d_ff=48))
    >>> cache = prefix_cache(llama, [1])         # BOS (id 1): (keys, values) per block
    >>> tail = prefixed_llama(llama, cache)      # positions 1.. only
    >>> full = llama(np.array([[1, 5, 9, 2]], "int32"))
    >>> bool(np.allclose(tail(np.array([[5, 9, 2]], "int32")), full[:, 1:], atol=1e-5))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import keras
import numpy as np
from keras import ops

from tfcompress.core.layers import clone_graph
from tfcompress.errors import TfcompressError
from tfcompress.models.gpt_integer import FLOAT_ISLAND
from tfcompress.models.llama import RMSNorm, RotaryAttention, llama_config_of


def prefix_cache(model: keras.Model, prefix_ids: Sequence[int]) -> list[tuple[np.ndarray, ...]]:
    """Per block of a `build_llama` ``model``, the keys (rotary positions applied) and values
    of ``prefix_ids`` at positions ``0 .. len(prefix_ids) - 1``: two float32 arrays
    ``(len(prefix_ids), n_kv_heads, head_dim)``, as a KV cache holds them."""
    cfg = llama_config_of(model)
    ids = np.asarray(prefix_ids, "int32").reshape(1, -1)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise TfcompressError(f"prefix_ids must be 1 or more token ids in [0, {cfg.vocab_size}), "
                              f"got {np.asarray(prefix_ids).reshape(-1).tolist()}")
    names = [f"block{i}_attn_{kv}" for i in range(cfg.n_layers) for kv in "kv"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    outputs = probe(ids)
    cache = []
    for i in range(cfg.n_layers):
        attention = model.get_layer(f"block{i}_attention")
        k, v = (ops.reshape(t, (1, ids.size, cfg.n_kv_heads, cfg.head_dim))
                for t in outputs[2 * i:2 * i + 2])
        keys = np.asarray(attention.rotate(k), "float32")[0]
        cache.append((keys, np.asarray(v, "float32")[0]))
    return cache


@keras.saving.register_keras_serializable(package="tfcompress")
class PrefixAttention(RotaryAttention):
    """`RotaryAttention` for positions after a constant prefix of rotated ``keys`` and
    ``values`` ``(prefix, n_kv_heads, head_dim)``; ``float_island`` traces it under
    `FLOAT_ISLAND`."""

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int, rope_base: float = 1e4,
                 keys=None, values=None, float_island: bool = False, **kwargs):
        super().__init__(n_heads, n_kv_heads, head_dim, rope_base, **kwargs)
        self.keys = np.asarray(keys, "float32")
        self.values = np.asarray(values, "float32")
        self.float_island = float_island

    def call(self, inputs):
        q, k, v = self.heads(inputs)
        prefix = self.keys.shape[0]
        batch = ops.shape(q)[0]

        def joined(constant, x):
            constant = ops.cast(ops.convert_to_tensor(constant[None]), x.dtype)
            return ops.concatenate([ops.repeat(constant, batch, axis=0), x], axis=1)

        with keras.name_scope(FLOAT_ISLAND) if self.float_island else nullcontext():
            k = joined(self.keys, self.rotate(k, prefix))
            return self.attend(self.rotate(q, prefix), k, joined(self.values, v), prefix)

    def get_config(self):
        return {**super().get_config(), "keys": self.keys.tolist(),
                "values": self.values.tolist(), "float_island": self.float_island}


class FloatIsland(keras.layers.Layer):
    """``layer`` (its own variables) traced under the `FLOAT_ISLAND` name scope."""

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        super().__init__(name=f"{layer.name}_island", **kwargs)
        self.inner = layer

    def call(self, x):
        with keras.name_scope(FLOAT_ISLAND):
            return self.inner(x)


def prefixed_llama(model: keras.Model, cache: list[tuple[np.ndarray, ...]],
                   float_islands: bool = False) -> keras.Model:
    """``model`` (a `build_llama` model) over the positions after the prefix whose
    `prefix_cache` is ``cache``: token ids ``(batch, seq)`` to logits ``(batch, seq, vocab)``.

    Every layer but the attention cores (and, with ``float_islands``, the norms) is
    ``model``'s own, so the variables are shared, not copied. ``model`` is not changed.
    """
    cfg = llama_config_of(model)
    if len(cache) != cfg.n_layers or any(
            k.shape != v.shape or k.shape[1:] != (cfg.n_kv_heads, cfg.head_dim)
            for k, v in cache):
        raise TfcompressError(
            f"cache must hold {cfg.n_layers} (keys, values) pairs of shape (prefix, "
            f"{cfg.n_kv_heads}, {cfg.head_dim}) from prefix_cache(model, ...), got "
            f"{[(np.shape(k), np.shape(v)) for k, v in cache]}")
    blocks = {f"block{i}_attention": i for i in range(cfg.n_layers)}

    def clone(layer):
        if layer.name in blocks:
            keys, values = cache[blocks[layer.name]]
            return PrefixAttention(layer.n_heads, layer.n_kv_heads, layer.head_dim,
                                   layer.rope_base, keys, values, float_islands, name=layer.name)
        return FloatIsland(layer) if float_islands and isinstance(layer, RMSNorm) else layer

    tail = clone_graph(model, clone)
    return keras.Model(tail.inputs, tail.outputs, name=f"{model.name}_prefixed")
