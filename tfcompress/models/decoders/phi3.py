"""KerasHub ``Phi3CausalLM``: the Llama layout under other attribute names, and its ``su``
scaled RoPE (frequencies divided by per-dimension short or long factors, cos and sin
amplified when the context exceeds pretraining; the long factors take over in a call that
reaches past ``pretraining_sequence_length``, as in its Keras layer).

Example:
    >>> read_decoder(keras_hub.models.Phi3CausalLM(backbone=..., preprocessor=None)).kind
    'phi3'
"""

from __future__ import annotations

import numpy as np

from tfcompress.models.decoders.base import (
    Decoder,
    Rope,
    Weights,
    hub_rope,
    put_gated_block,
    put_norm,
    tied_or_head,
    to_array,
)
from tfcompress.models.decoders.registry import register_decoder


def phi3_rope(layer, head_dim: int) -> Rope:
    if not hasattr(layer, "inverese_freq_short_factor"):  # KerasHub's spelling
        return hub_rope(layer, head_dim)
    base = to_array(layer._get_inverse_freq(head_dim))
    short = base / np.asarray(layer.inverese_freq_short_factor, np.float32)
    long = base / np.asarray(layer.inverese_freq_long_factor, np.float32)
    return Rope.of(short, layer.embedding_scaling_factor,
                   long_inv_freq=tuple(float(f) for f in long),
                   long_after=int(layer.pretraining_sequence_length))


@register_decoder("keras_hub.src.models.phi3.phi3_causal_lm.Phi3CausalLM")
def phi3(model) -> Decoder:
    backbone = model.backbone
    w = Weights(embed=to_array(backbone.token_embedding.embeddings))
    ropes, blocks = [], backbone.transformer_layers
    for i, block in enumerate(blocks):
        att = block.attention
        put_gated_block(w, "phi3", i, (block.pre_attention_layernorm,
                                       block.post_attention_layernorm),
                        {"q": att.query_dense, "k": att.key_dense, "v": att.value_dense,
                         "out": att.output_dense, "gate": block.feedforward_gate_dense,
                         "up": block.feedforward_intermediate_dense,
                         "down": block.feedforward_output_dense}, block.activation)
        heads, head_dim = att.query_dense.partial_output_shape[-2:]
        ropes.append(phi3_rope(att.rotary_embedding_layer, head_dim))
    put_norm(w, "final_norm", backbone.layer_norm)
    tied_or_head(w, backbone.token_embedding)
    kv_heads = blocks[0].attention.key_dense.partial_output_shape[-2]
    vocab, d = w["embed"].shape
    return Decoder("phi3", int(vocab), int(d), len(blocks), int(heads), int(kv_heads),
                   int(head_dim), float(backbone.layer_norm.epsilon), rope=ropes, weights=w)
