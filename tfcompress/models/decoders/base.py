"""The shared description of a decoder-only LM that `export_llm` traces: shape, flags of the
shared maths, and weights as NumPy arrays by canonical name.

A family adapter (`register_decoder`) reads a model's own layers into a `Decoder` with
`Weights` (`put_linear`, `put_norm`) and a `Rope` per layer; `tfcompress.export.llm_graph`
holds the one copy of the maths. A user decoder may instead give its own callables (``embed``,
``layer``, ``final_norm``, ``head``) that call its Keras layers directly.

Example:
    >>> w = Weights(embed=to_array(backbone.token_embedding.embeddings))
    >>> put_linear(w, "0.q", block.attention.query_dense)
    >>> Decoder("mine", vocab, d, 1, heads, heads, d // heads, 1e-6, weights=w, ...)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tfcompress.core.layers import kernel_matrix
from tfcompress.errors import TfcompressError


@dataclass(frozen=True)
class Rope:
    """Rotary embedding of one layer: angles ``position * inv_freq`` on the first
    ``2 * len(inv_freq)`` features of each head (fewer than ``head_dim``: partial rotary),
    halves rotated; cos and sin times ``amplitude`` (YaRN, Phi3's scaled RoPE). Phi3's
    ``su`` scaling switches to ``long_inv_freq`` once a call reaches past ``long_after``
    positions, as its Keras layer does."""

    inv_freq: tuple[float, ...]
    amplitude: float = 1.0
    long_inv_freq: tuple[float, ...] | None = None
    long_after: int | None = None

    @classmethod
    def of(cls, inv_freq, amplitude: float = 1.0, **kwargs) -> Rope:
        return cls(tuple(float(f) for f in to_array(inv_freq).reshape(-1)), float(amplitude),
                   **kwargs)

    @property
    def rotary_dim(self) -> int:
        return 2 * len(self.inv_freq)


@dataclass
class Decoder:
    """Shape of a decoder-only LM, the flags of the shared maths, and its weights.

    Weights by canonical name: ``embed`` ``(vocab, d)``, ``pos_embed`` (learned positions),
    per layer ``{i}.norm1``/``{i}.norm2`` (``.scale``, and ``.bias`` for LayerNorm), linear
    maps ``{i}.q/k/v/out`` and ``{i}.gate/up/down`` (``.w``: one ``(d_in, d_out)`` matrix or
    two low-rank factors; ``.b``: bias if any), optional ``{i}.q_norm``/``{i}.k_norm`` (per
    head RMSNorm before RoPE), ``{i}.post_attn_norm``/``{i}.post_mlp_norm``, then
    ``final_norm``, optional ``final_mix`` (``R``, ``d x d``: ``x -> x + x R`` after it, a
    rotated model's final norm scale, `tfcompress.quantize.rotate`) and ``head`` (absent:
    tied to ``embed``). Norm scales are stored as multiplied (Gemma's ``1 + scale`` is folded
    in when read).

    ``norm``: ``"rms"`` or ``"layer"``; ``activation``: ``"silu"``, ``"gelu"`` or
    ``"gelu_tanh"``, gated (``act(gate) * up``) when ``gated``; ``embed_scale`` multiplies
    the embedding (Gemma's ``sqrt(d)``); ``query_scale`` the scores (default
    ``head_dim ** -0.5``); ``attn_softcap``/``final_softcap``: ``tanh(x / c) * c`` on scores
    and logits; ``rope``: one `Rope` or None (no positions, SmolLM3's NoPE layers) per layer;
    ``window``: sliding-window length or None per layer; ``mlp_hadamard``: the MLP's hidden
    state is multiplied by ``hadamard(width) / sqrt(width)`` before ``down`` (QuaRot's
    online rotation, `tfcompress.core.hadamard.kron_matmul`).

    ``embed``, ``layer``, ``final_norm``, ``head``: callables replacing the shared maths of
    that part (a user decoder's own layers; ``modules`` lists the Keras layers they use so
    their variables are saved): ``embed(tokens (n,), positions (n,)) -> (n, d)``,
    ``layer(i, x (n, d), step) -> (n, d)`` where ``step`` is a
    `tfcompress.export.llm_graph.CacheStep` (``rotate``, ``write``, ``attend``),
    ``final_norm(x) -> x``, ``head(x) -> (n, vocab)``.
    """

    kind: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    norm_eps: float
    max_positions: int | None = None
    norm: str = "rms"
    gated: bool = True
    activation: str = "silu"
    embed_scale: float | None = None
    query_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    rope: tuple[Rope | None, ...] = ()
    window: tuple[int | None, ...] = ()
    mlp_hadamard: bool = False
    weights: dict = field(default_factory=dict, repr=False)
    # linear maps whose Keras layer held quantized codes (`tfcompress.quantize`), and of
    # those on a signed integer grid: (codes int8 (d_in, d_out), scale, group rows)
    quantized: tuple[str, ...] = ()
    codes: dict = field(default_factory=dict, repr=False)
    embed: Callable | None = field(default=None, repr=False)
    layer: Callable | None = field(default=None, repr=False)
    final_norm: Callable | None = field(default=None, repr=False)
    head: Callable | None = field(default=None, repr=False)
    modules: tuple = field(default=(), repr=False)

    def __post_init__(self):
        self.rope = tuple(self.rope) or (None,) * self.n_layers
        self.window = tuple(self.window) or (None,) * self.n_layers
        if isinstance(self.weights, Weights):
            self.quantized = self.quantized or tuple(self.weights.quantized)
            self.codes = self.codes or self.weights.codes

    def describe(self) -> dict:
        """The shape fields and flags (JSON-serializable), without weights or callables."""
        out = {k: v for k, v in self.__dict__.items() if k not in (
            "weights", "quantized", "codes", "embed", "layer", "final_norm", "head",
            "modules", "rope")}
        out["window"] = list(self.window)
        out["rope"] = [None if r is None else {"rotary_dim": r.rotary_dim,
                                               "amplitude": r.amplitude,
                                               "long_after": r.long_after}
                       for r in self.rope]
        out["custom"] = [k for k in ("embed", "layer", "final_norm", "head")
                         if getattr(self, k) is not None]
        return out


class Weights(dict):
    """Weights by name, remembering which linear maps came from quantized layers."""

    def __init__(self, **weights):
        super().__init__(**weights)
        self.quantized: list[str] = []
        self.codes: dict = {}


def to_array(x) -> np.ndarray:
    """A variable, tensor or array as a float32 NumPy array."""
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)


def _linear(layer) -> list[np.ndarray]:
    """A layer's kernel as matrices: ``[w]``, or ``[u, v]`` for a `LowRankDense`."""
    if hasattr(layer, "u") and hasattr(layer, "v") and not hasattr(layer, "kernel"):
        return [to_array(layer.u).reshape(-1, layer.rank),
                to_array(layer.v).reshape(layer.rank, -1)]
    return [kernel_matrix(layer)]


def put_linear(weights: Weights, name: str, layer) -> None:
    """``layer``'s kernel (quantized layers decoded, their signed codes kept) and bias."""
    from tfcompress.quantize.storage import is_quantized, signed_codes

    weights[f"{name}.w"] = _linear(layer)
    if is_quantized(layer):
        weights.quantized.append(name)
        grid = signed_codes(layer)
        if grid is not None:
            weights.codes[name] = grid
    bias = getattr(layer, "bias", None)
    if bias is not None:
        weights[f"{name}.b"] = to_array(bias).reshape(-1)


def put_norm(weights: dict, name: str, layer, plus_one: bool = False) -> None:
    """An RMSNorm's ``scale`` (``1 + scale`` with ``plus_one``: Gemma) or a LayerNorm's
    ``gamma``/``beta``."""
    if hasattr(layer, "scale") and not hasattr(layer, "gamma"):
        weights[f"{name}.scale"] = to_array(layer.scale) + (1.0 if plus_one else 0.0)
        return
    weights[f"{name}.scale"] = to_array(layer.gamma)
    weights[f"{name}.bias"] = to_array(layer.beta)


def put_gated_block(weights: Weights, kind: str, i: int, norms: tuple, linears: dict,
                    activation=None) -> None:
    """Layer ``i`` of a pre-norm decoder with a SiLU-gated MLP: its two norms (before
    attention, before the MLP) and its ``q k v out gate up down`` Keras layers.
    ``activation``: the layer's configured one (None where the layer hard-codes SiLU)."""
    name = getattr(activation, "__name__", str(activation))
    if activation is not None and name != "silu":
        raise TfcompressError(f"{kind} layer {i} uses activation {name!r}; export_llm's gated "
                              "MLP takes 'silu'")
    put_norm(weights, f"{i}.norm1", norms[0])
    put_norm(weights, f"{i}.norm2", norms[1])
    for part, layer in linears.items():
        put_linear(weights, f"{i}.{part}", layer)


def hub_rope(layer, rotary_dim: int) -> Rope:
    """The `Rope` of a KerasHub ``RotaryEmbedding`` (or subclass): its own inverse
    frequencies (Llama 3.1 smoothing, linear/dynamic/YaRN scaling) and YaRN's amplitude."""
    import math

    amplitude = 1.0
    if getattr(layer, "rope_type", None) == "yarn":
        amplitude = 0.1 * math.log(layer.scaling_factor) + 1.0
    return Rope.of(layer._get_inverse_freq(rotary_dim), amplitude)


def tied_or_head(weights: Weights, embedding) -> None:
    """A KerasHub ``ReversibleEmbedding``'s separate output head, if it is not tied."""
    if not embedding.tie_weights:
        weights["head.w"] = [to_array(embedding.reverse_embeddings)]
