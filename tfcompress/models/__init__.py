"""Model builders: small GPT-style decoder-only LMs with named presets, Llama-family LMs, and
the decoder adapters `export_llm` reads any decoder-only LM with (`register_decoder`)."""

from tfcompress.models import llama_rotation  # noqa: F401  (registers build_llama with rotate)
from tfcompress.models.decoders import Decoder, register_decoder
from tfcompress.models.gpt import PRESETS, GPTConfig, build_gpt, gpt_param_count, preset
from tfcompress.models.layers import PositionEmbedding, TiedEmbedding
from tfcompress.models.llama import (
    LlamaConfig,
    RMSNorm,
    RotaryAttention,
    build_llama,
    causal_lm_perplexity,
    generate,
)

__all__ = [
    "PRESETS",
    "Decoder",
    "GPTConfig",
    "LlamaConfig",
    "PositionEmbedding",
    "RMSNorm",
    "RotaryAttention",
    "TiedEmbedding",
    "build_gpt",
    "build_llama",
    "causal_lm_perplexity",
    "generate",
    "gpt_param_count",
    "preset",
    "register_decoder",
]
