"""A decoder-only LM as plain arrays plus a cached forward pass in TensorFlow ops.

`decoder_of` reads a Keras LM (`build_llama`, `build_gpt`, KerasHub ``GPT2CausalLM``) into a
`Decoder`: its shape and every weight as a NumPy array (quantized layers decoded, low-rank
layers kept as their two factors). `cached_forward` runs ``n`` new tokens at positions
``input_pos`` against a key/value cache of fixed length, the computation behind the
``prefill`` and ``decode`` signatures of `export_llm`.

Example:
    >>> dec = decoder_of(model)
    >>> logits, caches = cached_forward(dec, weights, tokens, input_pos, caches)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tfcompress.core.layers import kernel_matrix
from tfcompress.errors import TfcompressError

# name scope of the output head in the traced graph (a quantization recipe picks it by name)
HEAD_SCOPE = "lm_head"
ARCHITECTURES = ("llama (tfcompress.models.build_llama)", "gpt (tfcompress.models.build_gpt)",
                 "keras_hub GPT2CausalLM")


@dataclass
class Decoder:
    """Shape of a decoder-only LM and its weights by canonical name.

    ``kind`` is ``"llama"`` (RMSNorm, RoPE, grouped-query attention, SwiGLU, no biases) or
    ``"gpt"`` (LayerNorm, learned positions, biased attention and GELU MLP). A linear map is a
    list of one ``(d_in, d_out)`` matrix, or two factors for a low-rank layer, under
    ``"{name}.w"``; its bias (if any) under ``"{name}.b"``.
    """

    kind: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    norm_eps: float
    max_positions: int | None = None
    rope_base: float = 10000.0
    gelu_approximate: bool = False
    weights: dict = field(default_factory=dict, repr=False)
    # linear maps whose Keras layer held quantized codes (`tfcompress.quantize`), and of
    # those on a signed integer grid: (codes int8 (d_in, d_out), scale, group rows)
    quantized: tuple[str, ...] = ()
    codes: dict = field(default_factory=dict, repr=False)

    def describe(self) -> dict:
        """The shape fields (JSON-serializable), without weights."""
        return {k: v for k, v in self.__dict__.items()
                if k not in ("weights", "quantized", "codes")}


class _Weights(dict):
    """Weights by name, remembering which linear maps came from quantized layers."""

    def __init__(self, **weights):
        super().__init__(**weights)
        self.quantized: list[str] = []
        self.codes: dict = {}


def _np(x) -> np.ndarray:
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)


def _linear(layer) -> list[np.ndarray]:
    """A layer's kernel as matrices: ``[w]``, or ``[u, v]`` for a `LowRankDense`."""
    if hasattr(layer, "u") and hasattr(layer, "v") and not hasattr(layer, "kernel"):
        return [_np(layer.u).reshape(-1, layer.rank), _np(layer.v).reshape(layer.rank, -1)]
    return [kernel_matrix(layer)]


def _put_linear(weights: _Weights, name: str, layer) -> None:
    from tfcompress.quantize.storage import is_quantized, signed_codes

    weights[f"{name}.w"] = _linear(layer)
    if is_quantized(layer):
        weights.quantized.append(name)
        grid = signed_codes(layer)
        if grid is not None:
            weights.codes[name] = grid
    bias = getattr(layer, "bias", None)
    if bias is not None:
        weights[f"{name}.b"] = _np(bias).reshape(-1)


def _put_norm(weights: dict, name: str, layer) -> None:
    if hasattr(layer, "scale") and not hasattr(layer, "gamma"):
        weights[f"{name}.scale"] = _np(layer.scale)
        return
    weights[f"{name}.scale"] = _np(layer.gamma)
    weights[f"{name}.bias"] = _np(layer.beta)


def _layer(model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _llama(model) -> Decoder:
    from tfcompress.models.llama import llama_config_of

    cfg = llama_config_of(model)
    w = _Weights(embed=_np(model.get_layer("token_embedding").embeddings))
    for i in range(cfg.n_layers):
        b = f"block{i}"
        _put_norm(w, f"{i}.norm1", model.get_layer(f"{b}_attn_norm"))
        _put_norm(w, f"{i}.norm2", model.get_layer(f"{b}_mlp_norm"))
        for part in ("q", "k", "v", "out"):
            _put_linear(w, f"{i}.{part}", model.get_layer(f"{b}_attn_{part}"))
        for part in ("gate", "up", "down"):
            _put_linear(w, f"{i}.{part}", model.get_layer(f"{b}_mlp_{part}"))
    _put_norm(w, "final_norm", model.get_layer("final_norm"))
    if not cfg.tie_embeddings:
        _put_linear(w, "head", model.get_layer("lm_head"))
    return Decoder("llama", cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads,
                   cfg.n_kv_heads, cfg.head_dim, cfg.rms_eps, rope_base=cfg.rope_base,
                   weights=w, quantized=tuple(w.quantized), codes=w.codes)


def _gpt_block(w: _Weights, i: int, ln1, attention, ln2, mlp_in, mlp_out) -> None:
    _put_norm(w, f"{i}.norm1", ln1)
    _put_norm(w, f"{i}.norm2", ln2)
    for part, sub in (("q", "_query_dense"), ("k", "_key_dense"), ("v", "_value_dense"),
                      ("out", "_output_dense")):
        _put_linear(w, f"{i}.{part}", getattr(attention, sub))
    _put_linear(w, f"{i}.up", mlp_in)
    _put_linear(w, f"{i}.down", mlp_out)


def _gpt_decoder(w: _Weights, n_layers: int, attention, eps: float, positions: int,
                 approximate: bool) -> Decoder:
    vocab, d = w["embed"].shape
    heads, head_dim = attention.num_heads, attention.key_dim
    return Decoder("gpt", int(vocab), int(d), n_layers, heads, heads, head_dim, eps,
                   max_positions=positions, gelu_approximate=approximate, weights=w,
                   quantized=tuple(w.quantized), codes=w.codes)


def _gpt(model) -> Decoder:
    w = _Weights(embed=_np(model.get_layer("token_embedding").embeddings))
    position = model.get_layer("position_embedding")
    w["pos_embed"] = _np(position.position_embeddings)
    n_layers = sum(1 for la in model.layers if la.name.endswith("_attn")
                   and la.name.startswith("block"))
    for i in range(n_layers):
        b = f"block{i}"
        mlp_in = model.get_layer(f"{b}_mlp_in")
        if getattr(mlp_in.activation, "__name__", "") != "gelu":
            raise TfcompressError(f"layer {b}_mlp_in must use GELU to export, got "
                                  f"{getattr(mlp_in.activation, '__name__', mlp_in.activation)}")
        _gpt_block(w, i, model.get_layer(f"{b}_ln1"), model.get_layer(f"{b}_attn"),
                   model.get_layer(f"{b}_ln2"), mlp_in, model.get_layer(f"{b}_mlp_out"))
    final = model.get_layer("final_norm")
    _put_norm(w, "final_norm", final)
    if _layer(model, "lm_head") is not None:
        _put_linear(w, "head", model.get_layer("lm_head"))
    return _gpt_decoder(w, n_layers, model.get_layer("block0_attn"), final.epsilon,
                        int(position.max_length), approximate=False)


def _gpt2_hub(model) -> Decoder:
    backbone = model.backbone
    w = _Weights(embed=_np(backbone.token_embedding.embeddings))
    w["pos_embed"] = _np(backbone.position_embedding.position_embeddings)
    blocks = backbone.transformer_layers
    for i, block in enumerate(blocks):
        if not block.normalize_first:
            raise TfcompressError("only pre-LayerNorm (normalize_first) GPT-2 blocks export")
        _gpt_block(w, i, block._self_attention_layer_norm, block._self_attention_layer,
                   block._feedforward_layer_norm, block._feedforward_intermediate_dense,
                   block._feedforward_output_dense)
    _put_norm(w, "final_norm", backbone.layer_norm)
    if not backbone.token_embedding.tie_weights:
        w["head.w"] = [_np(backbone.token_embedding.reverse_embeddings)]
    return _gpt_decoder(w, len(blocks), blocks[0]._self_attention_layer,
                        backbone.layer_norm.epsilon, int(w["pos_embed"].shape[0]),
                        approximate=True)


def decoder_of(model) -> Decoder:
    """Read ``model`` into a `Decoder` (weights copied out; the model is not changed).

    Raises `TfcompressError` for any other architecture.
    """
    kind = type(model).__name__
    if kind == "GPT2CausalLM":
        return _gpt2_hub(model)
    layers = {la.name for la in getattr(model, "layers", [])}
    if "block0_attention" in layers and "token_embedding" in layers:
        return _llama(model)
    if "block0_attn" in layers and "position_embedding" in layers:
        return _gpt(model)
    raise TfcompressError(
        f"model {getattr(model, 'name', kind)!r} ({kind}) is not an architecture export_llm "
        f"knows; supported: {', '.join(ARCHITECTURES)}")


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


def _norm(tf, dec: Decoder, weights: dict, name: str, x):
    # the constant scale multiplies first: a constant MUL right before a matmul is folded into
    # its weights by the converter, which would move them off a quantized grid
    if dec.kind == "llama":
        return x * weights[f"{name}.scale"] * tf.math.rsqrt(
            tf.reduce_mean(tf.square(x), -1, keepdims=True) + dec.norm_eps)
    mean = tf.reduce_mean(x, -1, keepdims=True)
    var = tf.reduce_mean(tf.square(x - mean), -1, keepdims=True)
    return (x - mean) * weights[f"{name}.scale"] * tf.math.rsqrt(var + dec.norm_eps) + \
        weights[f"{name}.bias"]


def _rope(tf, x, cos, sin, half: int):
    rotated = tf.concat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def _attend(tf, dec: Decoder, q, k_cache, v_cache, mask_bias):
    """``q`` (n, heads, hd) against caches (1, kv_heads, C, hd) -> (n, heads * hd)."""
    n = tf.shape(q)[0]
    kv, group, hd = dec.n_kv_heads, dec.n_heads // dec.n_kv_heads, dec.head_dim
    # query head h uses KV head h // group: group query heads per KV head, no repeat of K/V.
    # The caches enter the 4-D matmuls as they are: slicing off their batch axis would copy
    # the whole cache every step outside XNNPACK (~1 ms per cache of 1024 x 192 floats)
    q = tf.reshape(tf.transpose(tf.reshape(q, (n, kv, group, hd)), (1, 2, 0, 3)),
                   (1, kv, group * n, hd))
    scores = tf.matmul(q, k_cache, transpose_b=True) * (1.0 / np.sqrt(hd))
    scores = tf.reshape(scores, (kv, group, n, -1)) + mask_bias
    probs = tf.reshape(tf.nn.softmax(scores, -1), (1, kv, group * n, -1))
    out = tf.reshape(tf.matmul(probs, v_cache), (kv, group, n, hd))
    return tf.reshape(tf.transpose(out, (2, 0, 1, 3)), (n, dec.n_heads * hd))


def cached_forward(dec: Decoder, weights: dict, tokens, input_pos, k_caches: list,
                   v_caches: list, logits: bool = True):
    """Run ``tokens`` (1, n) at consecutive positions ``input_pos`` (n,) through the model.

    ``k_caches``/``v_caches`` hold one ``(1, kv_heads, cache_length, head_dim)`` tensor per
    layer (the layout LiteRT-LM reads its cache length from); the new keys/values are written
    at ``input_pos[0] .. input_pos[0] + n - 1`` and every query sees the cache up to its own
    position. Returns ``(logits (1, n, vocab) or None, new k caches, new v caches)``.
    ``weights`` maps `Decoder` names to tensors.
    """
    import tensorflow as tf
    from tensorflow.compiler.tf2xla.python import xla

    n = tf.shape(tokens)[1]
    cache_len = k_caches[0].shape[2]
    x = tf.gather(weights["embed"], tokens[0])
    if "pos_embed" in weights:
        x = x + tf.gather(weights["pos_embed"], input_pos)
    visible = tf.range(cache_len)[None, :] <= input_pos[:, None]
    mask_bias = tf.where(visible, 0.0, -1e30)
    if dec.kind == "llama":
        half = dec.head_dim // 2
        inv_freq = dec.rope_base ** (-np.arange(0, dec.head_dim, 2, dtype=np.float64)
                                     / dec.head_dim)
        angles = tf.cast(input_pos, tf.float32)[:, None] * inv_freq.astype(np.float32)[None]
        angles = tf.concat([angles, angles], -1)[:, None, :]
        cos, sin = tf.cos(angles), tf.sin(angles)
    start = tf.stack([0, 0, input_pos[0], 0])
    new_k, new_v = [], []
    for i in range(dec.n_layers):
        h = _norm(tf, dec, weights, f"{i}.norm1", x)
        q = tf.reshape(_apply(tf, weights, f"{i}.q", h), (n, dec.n_heads, dec.head_dim))
        k = tf.reshape(_apply(tf, weights, f"{i}.k", h), (n, dec.n_kv_heads, dec.head_dim))
        v = tf.reshape(_apply(tf, weights, f"{i}.v", h), (n, dec.n_kv_heads, dec.head_dim))
        if dec.kind == "llama":
            q, k = _rope(tf, q, cos, sin, half), _rope(tf, k, cos, sin, half)
        k_cache = xla.dynamic_update_slice(k_caches[i], tf.transpose(k, (1, 0, 2))[None], start)
        v_cache = xla.dynamic_update_slice(v_caches[i], tf.transpose(v, (1, 0, 2))[None], start)
        new_k.append(k_cache)
        new_v.append(v_cache)
        att = _attend(tf, dec, q, k_cache, v_cache, mask_bias)
        x = x + _apply(tf, weights, f"{i}.out", att)
        h = _norm(tf, dec, weights, f"{i}.norm2", x)
        if dec.kind == "llama":
            h = tf.nn.silu(_apply(tf, weights, f"{i}.gate", h)) * _apply(tf, weights,
                                                                         f"{i}.up", h)
        else:
            h = tf.nn.gelu(_apply(tf, weights, f"{i}.up", h), approximate=dec.gelu_approximate)
        x = x + _apply(tf, weights, f"{i}.down", h)
    if not logits:
        return None, new_k, new_v
    x = _norm(tf, dec, weights, "final_norm", x)
    with tf.name_scope(HEAD_SCOPE):
        if "head.w" in weights:
            out = _apply(tf, weights, "head", x)
        else:
            out = tf.matmul(x, weights["embed"], transpose_b=True)
    return out[None], new_k, new_v
