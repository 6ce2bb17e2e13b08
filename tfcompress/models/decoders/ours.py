"""Adapters of tfcompress's own LMs: `build_llama` (RMSNorm, RoPE, grouped-query attention,
SwiGLU) and `build_gpt` (LayerNorm, learned positions, biased attention, GELU MLP). Both are
functional Keras models, recognised by their layers (the registry asks every ``keras.Model``).

Example:
    >>> read_decoder(build_llama(LlamaConfig(...))).kind
    'llama'
"""

from __future__ import annotations

import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.models.decoders.base import Decoder, Rope, Weights, put_linear, put_norm, to_array
from tfcompress.models.decoders.registry import register_decoder


def _layer(model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def llama_decoder(model) -> Decoder:
    from tfcompress.models.llama import llama_config_of

    cfg = llama_config_of(model)
    w = Weights(embed=to_array(model.get_layer("token_embedding").embeddings))
    for i in range(cfg.n_layers):
        b = f"block{i}"
        put_norm(w, f"{i}.norm1", model.get_layer(f"{b}_attn_norm"))
        put_norm(w, f"{i}.norm2", model.get_layer(f"{b}_mlp_norm"))
        for part in ("q", "k", "v", "out"):
            put_linear(w, f"{i}.{part}", model.get_layer(f"{b}_attn_{part}"))
        for part in ("gate", "up", "down"):
            put_linear(w, f"{i}.{part}", model.get_layer(f"{b}_mlp_{part}"))
    put_norm(w, "final_norm", model.get_layer("final_norm"))
    if cfg.final_mix:
        put_linear(w, "final_mix", model.get_layer("final_mix"))
    if not cfg.tie_embeddings:
        put_linear(w, "head", model.get_layer("lm_head"))
    # the same float64 -> float32 frequencies as `RotaryAttention`
    inv_freq = cfg.rope_base ** (-np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim)
    rope = Rope.of(inv_freq.astype(np.float32))
    return Decoder("llama", cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads,
                   cfg.n_kv_heads, cfg.head_dim, cfg.rms_eps, rope=(rope,) * cfg.n_layers,
                   mlp_hadamard=cfg.mlp_hadamard, weights=w)


def gpt_block(w: Weights, i: int, ln1, attention, ln2, mlp_in, mlp_out) -> None:
    """A pre-LayerNorm block with a Keras ``MultiHeadAttention`` (ours and KerasHub GPT-2)."""
    put_norm(w, f"{i}.norm1", ln1)
    put_norm(w, f"{i}.norm2", ln2)
    for part, sub in (("q", "_query_dense"), ("k", "_key_dense"), ("v", "_value_dense"),
                      ("out", "_output_dense")):
        put_linear(w, f"{i}.{part}", getattr(attention, sub))
    put_linear(w, f"{i}.up", mlp_in)
    put_linear(w, f"{i}.down", mlp_out)


def gpt_decoder(kind: str, w: Weights, n_layers: int, attention, eps: float, positions: int,
                activation: str) -> Decoder:
    vocab, d = w["embed"].shape
    heads, head_dim = attention.num_heads, attention.key_dim
    return Decoder(kind, int(vocab), int(d), n_layers, heads, heads, head_dim, eps,
                   max_positions=positions, norm="layer", gated=False, activation=activation,
                   weights=w)


def gpt_of(model) -> Decoder:
    w = Weights(embed=to_array(model.get_layer("token_embedding").embeddings))
    position = model.get_layer("position_embedding")
    w["pos_embed"] = to_array(position.position_embeddings)
    n_layers = sum(1 for la in model.layers if la.name.endswith("_attn")
                   and la.name.startswith("block"))
    for i in range(n_layers):
        b = f"block{i}"
        mlp_in = model.get_layer(f"{b}_mlp_in")
        if getattr(mlp_in.activation, "__name__", "") != "gelu":
            raise TfcompressError(f"layer {b}_mlp_in must use GELU to export, got "
                                  f"{getattr(mlp_in.activation, '__name__', mlp_in.activation)}")
        gpt_block(w, i, model.get_layer(f"{b}_ln1"), model.get_layer(f"{b}_attn"),
                  model.get_layer(f"{b}_ln2"), mlp_in, model.get_layer(f"{b}_mlp_out"))
    final = model.get_layer("final_norm")
    put_norm(w, "final_norm", final)
    if _layer(model, "lm_head") is not None:
        put_linear(w, "head", model.get_layer("lm_head"))
    return gpt_decoder("gpt", w, n_layers, model.get_layer("block0_attn"), final.epsilon,
                       int(position.max_length), activation="gelu")


@register_decoder("keras.src.models.model.Model")
def tfcompress_lm(model) -> Decoder | None:
    """`build_llama` and `build_gpt` models; None for any other Keras model."""
    layers = {la.name for la in getattr(model, "layers", [])}
    if "block0_attention" in layers and "token_embedding" in layers:
        return llama_decoder(model)
    if "block0_attn" in layers and "position_embedding" in layers:
        return gpt_of(model)
    return None
