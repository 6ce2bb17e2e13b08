"""Model builders: small GPT-style decoder-only LMs with named presets, and Llama-family LMs."""

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
]
