"""KerasHub's Llama-layout decoders: ``LlamaCausalLM`` (and ``Llama3CausalLM``, its
subclass; SmolLM/SmolLM2 checkpoints are this architecture), ``MistralCausalLM`` (sliding
window), ``QwenCausalLM`` (alias ``Qwen2CausalLM``: q/k/v biases, optional sliding window)
and ``Qwen3CausalLM`` (per-head q/k RMSNorm). One reader: their decoder layers share
attribute names (``_self_attention_layer._query_dense``, ``_feedforward_gate_dense``...).

Example:
    >>> read_decoder(keras_hub.models.Qwen3CausalLM(backbone=..., preprocessor=None)).kind
    'qwen3'
"""

from __future__ import annotations

from tfcompress.models.decoders.base import (
    Decoder,
    Weights,
    hub_rope,
    put_gated_block,
    put_norm,
    tied_or_head,
    to_array,
)
from tfcompress.models.decoders.registry import register_decoder

_HUB = "keras_hub.src.models"


def _window(block, attention) -> int | None:
    """The sliding window a layer masks with: Mistral's on the decoder layer, Qwen2's when
    switched on, Qwen3's when set."""
    if hasattr(block, "sliding_window"):
        return block.sliding_window
    if hasattr(attention, "use_sliding_window_attention"):
        return attention.sliding_window_size if attention.use_sliding_window_attention else None
    return getattr(attention, "sliding_window_size", None) or None


def llama_style(kind: str, model) -> Decoder:
    backbone = model.backbone
    w = Weights(embed=to_array(backbone.token_embedding.embeddings))
    ropes, windows = [], []
    blocks = backbone.transformer_layers
    for i, block in enumerate(blocks):
        att = block._self_attention_layer
        put_gated_block(w, kind, i, (block._self_attention_layernorm,
                                     block._feedforward_layernorm),
                        {"q": att._query_dense, "k": att._key_dense, "v": att._value_dense,
                         "out": att._output_dense, "gate": block._feedforward_gate_dense,
                         "up": block._feedforward_intermediate_dense,
                         "down": block._feedforward_output_dense}, block.activation)
        if hasattr(att, "_query_dense_layer_norm"):  # Qwen3
            put_norm(w, f"{i}.q_norm", att._query_dense_layer_norm)
            put_norm(w, f"{i}.k_norm", att._key_dense_layer_norm)
        heads, head_dim = att._query_dense.partial_output_shape[-2:]
        ropes.append(hub_rope(att.rotary_embedding_layer, head_dim))
        windows.append(_window(block, att))
    put_norm(w, "final_norm", backbone.layer_norm)
    tied_or_head(w, backbone.token_embedding)
    kv_heads = blocks[0]._self_attention_layer._key_dense.partial_output_shape[-2]
    vocab, d = w["embed"].shape
    return Decoder(kind, int(vocab), int(d), len(blocks), int(heads), int(kv_heads),
                   int(head_dim), float(backbone.layer_norm.epsilon), rope=ropes,
                   window=windows, weights=w)


for _kind, _cls in (("llama", "llama.llama_causal_lm.LlamaCausalLM"),
                    ("mistral", "mistral.mistral_causal_lm.MistralCausalLM"),
                    ("qwen2", "qwen.qwen_causal_lm.QwenCausalLM"),
                    ("qwen3", "qwen3.qwen3_causal_lm.Qwen3CausalLM")):
    register_decoder(f"{_HUB}.{_cls}")(lambda model, kind=_kind: llama_style(kind, model))
