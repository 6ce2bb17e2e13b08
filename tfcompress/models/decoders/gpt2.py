"""KerasHub ``GPT2CausalLM``: pre-LayerNorm blocks, learned positions, GELU (tanh) MLP.

Example:
    >>> read_decoder(keras_hub.models.GPT2CausalLM(backbone=..., preprocessor=None)).kind
    'gpt2'
"""

from __future__ import annotations

from tfcompress.errors import TfcompressError
from tfcompress.models.decoders.base import Decoder, Weights, put_norm, tied_or_head, to_array
from tfcompress.models.decoders.ours import gpt_block, gpt_decoder
from tfcompress.models.decoders.registry import register_decoder


@register_decoder("keras_hub.src.models.gpt2.gpt2_causal_lm.GPT2CausalLM")
def gpt2(model) -> Decoder:
    backbone = model.backbone
    w = Weights(embed=to_array(backbone.token_embedding.embeddings))
    w["pos_embed"] = to_array(backbone.position_embedding.position_embeddings)
    blocks = backbone.transformer_layers
    for i, block in enumerate(blocks):
        if not block.normalize_first:
            raise TfcompressError("only pre-LayerNorm (normalize_first) GPT-2 blocks export")
        gpt_block(w, i, block._self_attention_layer_norm, block._self_attention_layer,
                  block._feedforward_layer_norm, block._feedforward_intermediate_dense,
                  block._feedforward_output_dense)
    put_norm(w, "final_norm", backbone.layer_norm)
    tied_or_head(w, backbone.token_embedding)
    return gpt_decoder("gpt2", w, len(blocks), blocks[0]._self_attention_layer,
                       backbone.layer_norm.epsilon, int(w["pos_embed"].shape[0]),
                       activation="gelu_tanh")
