"""Small GPT-style decoder-only language models built from standard Keras 3 layers.

The model is functional and made of built-in layers (Embedding, MultiHeadAttention,
LayerNormalization, Dense) so every compression method sees ordinary layers.

Example:
    >>> model = build_gpt(GPTConfig(vocab_size=256, seq_len=64, d_model=64, n_layers=2, n_heads=2))
    >>> model.output_shape                  # any length up to seq_len
    (None, None, 256)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import keras

from tfcompress.core.layers import copy_kept_blocks
from tfcompress.core.shallow import register_shallow_copy
from tfcompress.errors import TfcompressError
from tfcompress.models.layers import PositionEmbedding, TiedEmbedding


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT model; ``d_ff`` defaults to ``4 * d_model``."""

    vocab_size: int = 256
    seq_len: int = 128
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None
    tie_embeddings: bool = False
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                value = getattr(self, name)
                raise TfcompressError(f"{name} must be a positive integer, got {value}")
        if self.d_model % self.n_heads:
            raise TfcompressError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)

    def get_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> GPTConfig:
        return cls(**config)


PRESETS: dict[str, GPTConfig] = {
    "teacher": GPTConfig(d_model=256, n_layers=4, n_heads=4),
    "student": GPTConfig(d_model=128, n_layers=2, n_heads=2),
    "student-tiny": GPTConfig(d_model=64, n_layers=2, n_heads=2),
    "test-tiny": GPTConfig(seq_len=32, d_model=32, n_layers=2, n_heads=2),
}


def preset(name: str, **overrides) -> GPTConfig:
    """A named configuration, optionally with fields replaced (e.g. ``vocab_size``)."""
    if name not in PRESETS:
        raise TfcompressError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def build_gpt(config: GPTConfig | str = "teacher", name: str | None = None, **overrides):
    """Build a causal LM mapping token ids ``(batch, seq)`` to logits ``(batch, seq, vocab)``."""
    cfg = preset(config, **overrides) if isinstance(config, str) else replace(config, **overrides)
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embed_cls = TiedEmbedding if cfg.tie_embeddings else keras.layers.Embedding
    token_embedding = embed_cls(
        cfg.vocab_size,
        cfg.d_model,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
        name="token_embedding",
    )
    x = token_embedding(ids)
    x = PositionEmbedding(cfg.seq_len, name="position_embedding")(x)
    for i in range(cfg.n_layers):
        x = _block(x, cfg, f"block{i}")
    x = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_epsilon, name="final_norm")(x)
    if cfg.tie_embeddings:
        logits = token_embedding(x, reverse=True)
    else:
        logits = keras.layers.Dense(cfg.vocab_size, name="lm_head")(x)
    return keras.Model(ids, logits, name=name or "gpt")


def _block(x, cfg: GPTConfig, prefix: str):
    """Pre-LayerNorm transformer block: causal self-attention then a GELU MLP."""
    h = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_epsilon, name=f"{prefix}_ln1")(x)
    h = keras.layers.MultiHeadAttention(
        cfg.n_heads, cfg.d_model // cfg.n_heads, dropout=cfg.dropout, name=f"{prefix}_attn"
    )(h, h, use_causal_mask=True)
    x = keras.layers.Add(name=f"{prefix}_add1")([x, h])
    h = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_epsilon, name=f"{prefix}_ln2")(x)
    h = keras.layers.Dense(cfg.d_ff, activation="gelu", name=f"{prefix}_mlp_in")(h)
    h = keras.layers.Dense(cfg.d_model, name=f"{prefix}_mlp_out")(h)
    if cfg.dropout:
        h = keras.layers.Dropout(cfg.dropout, name=f"{prefix}_drop")(h)
    return keras.layers.Add(name=f"{prefix}_add2")([x, h])


def gpt_config_of(model: keras.Model) -> GPTConfig:
    """The `GPTConfig` of a model made by `build_gpt` (read back from its layers)."""
    try:
        attention = model.get_layer("block0_attn")
        embedding = model.get_layer("token_embedding")
        return GPTConfig(
            vocab_size=embedding.input_dim, d_model=embedding.output_dim,
            seq_len=model.get_layer("position_embedding").max_length,
            n_layers=sum(1 for la in model.layers
                         if isinstance(la, keras.layers.MultiHeadAttention)),
            n_heads=attention.num_heads, d_ff=int(model.get_layer("block0_mlp_in").units),
            tie_embeddings=not any(la.name == "lm_head" for la in model.layers),
            dropout=float(attention.dropout),
            layer_norm_epsilon=model.get_layer("final_norm").epsilon)
    except ValueError as err:
        raise TfcompressError(f"model {model.name!r} was not made by build_gpt: {err}") from err


def take_gpt_blocks(model: keras.Model, keep: Sequence[int], name: str = "student"):
    """A shallower `build_gpt` model holding blocks ``keep`` of ``model`` (weights copied)."""
    student = build_gpt(gpt_config_of(model), n_layers=len(keep), name=name)
    copy_kept_blocks(model, student, keep)
    return student


register_shallow_copy("gpt", lambda m: "block0_attn" in {la.name for la in m.layers},
                      take_gpt_blocks)


def gpt_param_count(cfg: GPTConfig) -> int:
    """Parameters of `build_gpt(cfg)` by formula, for checks and planning."""
    d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    attention = 4 * d * d + 4 * d
    mlp = d * f + f + f * d + d
    norms = 2 * 2 * d
    head = 0 if cfg.tie_embeddings else d * v + v
    return v * d + cfg.seq_len * d + cfg.n_layers * (attention + mlp + norms) + 2 * d + head
