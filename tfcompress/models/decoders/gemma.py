"""KerasHub ``GemmaCausalLM`` (Gemma 1 and 2) and ``Gemma3CausalLM`` (text only).

What differs from Llama, all read from the layers: RMSNorm times ``1 + scale`` (folded into
the stored scale), the embedding times ``sqrt(d)``, a GELU-tanh gated MLP, the query scale
(``head_dim`` or ``d / heads``), optional post-attention/post-MLP norms, attention and final
logit soft-capping, sliding-window layers, and for Gemma3 per-head q/k norms and a RoPE base
per layer (local and global). Gemma 1's attention interleaves the rotated halves of q and k
alike, which leaves every score unchanged, so the shared half-split RoPE is exact.

Example:
    >>> read_decoder(keras_hub.models.Gemma3CausalLM(backbone=..., preprocessor=None)).kind
    'gemma3'
"""

from __future__ import annotations

import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.models.decoders.base import (
    Decoder,
    Weights,
    hub_rope,
    put_linear,
    put_norm,
    to_array,
)
from tfcompress.models.decoders.registry import register_decoder


def gemma_style(kind: str, model) -> Decoder:
    backbone = model.backbone
    if getattr(backbone, "vision_encoder", None) is not None:
        raise TfcompressError(f"{kind}: only text-only models export (this one has a vision "
                              "encoder)")
    w = Weights(embed=to_array(backbone.token_embedding.embeddings))
    ropes, windows, blocks = [], [], backbone.transformer_layers
    for i, block in enumerate(blocks):
        att = block.attention
        if getattr(att, "use_bidirectional_attention", False):
            raise TfcompressError(f"{kind} layer {i} attends bidirectionally; export_llm "
                                  "exports causal decoders")
        put_norm(w, f"{i}.norm1", block.pre_attention_norm, plus_one=True)
        put_norm(w, f"{i}.norm2", block.pre_ffw_norm, plus_one=True)
        for part, layer in (("q", att.query_dense), ("k", att.key_dense),
                            ("v", att.value_dense), ("out", att.output_dense),
                            ("gate", block.gating_ffw), ("up", block.gating_ffw_2),
                            ("down", block.ffw_linear)):
            put_linear(w, f"{i}.{part}", layer)
        if getattr(att, "use_query_key_norm", False):
            put_norm(w, f"{i}.q_norm", att.query_norm, plus_one=True)
            put_norm(w, f"{i}.k_norm", att.key_norm, plus_one=True)
        if block.use_post_attention_norm:
            put_norm(w, f"{i}.post_attn_norm", block.post_attention_norm, plus_one=True)
        if block.use_post_ffw_norm:
            put_norm(w, f"{i}.post_mlp_norm", block.post_ffw_norm, plus_one=True)
        ropes.append(hub_rope(att.rope_layer, att.head_dim))
        windows.append(att.sliding_window_size if att.use_sliding_window_attention else None)
    att = blocks[0].attention
    query_dim = att.head_dim if att.query_head_dim_normalize else \
        att.hidden_dim // att.num_query_heads
    put_norm(w, "final_norm", backbone.layer_norm, plus_one=True)
    vocab, d = w["embed"].shape
    return Decoder(kind, int(vocab), int(d), len(blocks), att.num_query_heads,
                   att.num_key_value_heads, att.head_dim, float(backbone.layer_norm.epsilon),
                   activation="gelu_tanh",
                   embed_scale=float(np.float32(np.sqrt(np.float32(d)))),
                   query_scale=float(1 / np.sqrt(query_dim)),
                   attn_softcap=att.logit_soft_cap,
                   final_softcap=backbone.token_embedding.logit_soft_cap,
                   rope=ropes, window=windows, weights=w)


register_decoder("keras_hub.src.models.gemma.gemma_causal_lm.GemmaCausalLM")(
    lambda model: gemma_style("gemma", model))
register_decoder("keras_hub.src.models.gemma3.gemma3_causal_lm.Gemma3CausalLM")(
    lambda model: gemma_style("gemma3", model))
