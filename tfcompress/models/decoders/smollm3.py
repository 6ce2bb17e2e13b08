"""KerasHub ``SmolLM3CausalLM``: the Llama layout with Dense projections (optional biases)
and layers without RoPE (``rope_layer_enabled_list``: NoPE every few layers).

Example:
    >>> read_decoder(keras_hub.models.SmolLM3CausalLM(backbone=..., preprocessor=None)).kind
    'smollm3'
"""

from __future__ import annotations

from tfcompress.models.decoders.base import (
    Decoder,
    Rope,
    Weights,
    put_gated_block,
    put_norm,
    tied_or_head,
    to_array,
)
from tfcompress.models.decoders.registry import register_decoder


@register_decoder("keras_hub.src.models.smollm3.smollm3_causal_lm.SmolLM3CausalLM")
def smollm3(model) -> Decoder:
    backbone = model.backbone
    w = Weights(embed=to_array(backbone.token_embedding.embeddings))
    ropes, blocks = [], backbone.transformer_layers
    for i, block in enumerate(blocks):
        att, mlp = block.self_attn, block.mlp
        put_gated_block(w, "smollm3", i, (block.input_layernorm, block.post_attention_layernorm),
                        {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj, "out": att.o_proj,
                         "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj})
        rope = att.rotary_embedding
        ropes.append(Rope.of(rope.inv_freq, rope.attention_scaling) if att.use_rope else None)
    put_norm(w, "final_norm", backbone.norm)
    tied_or_head(w, backbone.token_embedding)
    att = blocks[0].self_attn
    vocab, d = w["embed"].shape
    return Decoder("smollm3", int(vocab), int(d), len(blocks), att.num_attention_heads,
                   att.num_key_value_heads, att.head_dim, float(backbone.norm.epsilon),
                   rope=ropes, weights=w)
