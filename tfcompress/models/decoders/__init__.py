"""Decoder adapters: how `export_llm` reads each decoder-only LM family into one shared
form (`Decoder`), looked up by model class along its MRO (`register_decoder`).

Built in: tfcompress's `build_gpt` and `build_llama`; KerasHub ``GPT2CausalLM``,
``LlamaCausalLM`` / ``Llama3CausalLM`` (SmolLM, SmolLM2), ``MistralCausalLM``,
``QwenCausalLM`` (``Qwen2CausalLM``), ``Qwen3CausalLM``, ``GemmaCausalLM``,
``Gemma3CausalLM`` (text), ``Phi3CausalLM``, ``SmolLM3CausalLM``.

Example:
    >>> from tfcompress.models import Decoder, register_decoder
    >>> @register_decoder(MyLM)
    ... def my_lm(model):
    ...     return Decoder("my_lm", model.vocab, model.d, len(model.blocks), model.heads,
    ...                    model.heads, model.d // model.heads, 0.0, modules=(model,),
    ...                    embed=lambda tokens, positions: model.embedding(tokens),
    ...                    layer=lambda i, x, step: model.blocks[i].cached(x, step),
    ...                    final_norm=model.norm, head=model.head)
"""

from tfcompress.models.decoders.base import Decoder, Rope, Weights, put_linear, put_norm
from tfcompress.models.decoders.registry import read_decoder, register_decoder, registered

__all__ = ["Decoder", "Rope", "Weights", "put_linear", "put_norm", "read_decoder",
           "register_decoder", "registered"]
