"""Model builders: small GPT-style decoder-only LMs with named presets."""

from tfcompress.models.gpt import PRESETS, GPTConfig, build_gpt, gpt_param_count, preset
from tfcompress.models.layers import PositionEmbedding, TiedEmbedding

__all__ = [
    "PRESETS",
    "GPTConfig",
    "PositionEmbedding",
    "TiedEmbedding",
    "build_gpt",
    "gpt_param_count",
    "preset",
]
