"""Llama-family causal LMs in Keras 3: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Every weight matrix is an ordinary ``Dense`` layer (no bias) so pruning, quantization and
low-rank methods see plain layers: ``block{i}_attn_q/k/v/out`` and ``block{i}_mlp_gate/up/down``.
The attention core (`RotaryAttention`) holds no weights. RoPE uses the Hugging Face
"half-split" convention (``rotate_half``); the GGUF loader undoes llama.cpp's q/k row
permutation so its weights fit this convention.

Example:
    >>> cfg = LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48)
    >>> model = build_llama(cfg)
    >>> model(np.zeros((1, 5), "int32")).shape
    TensorShape([1, 5, 64])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import ops

from tfcompress.core.layers import copy_kept_blocks
from tfcompress.core.progress import progress_bar
from tfcompress.core.shallow import register_shallow_copy
from tfcompress.errors import TfcompressError
from tfcompress.models.attention import bounded_masked_softmax
from tfcompress.models.layers import HadamardRotation, TiedEmbedding


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a Llama-family model; ``head_dim`` defaults to ``d_model // n_heads``.

    Two layers that only a rotated model (`tfcompress.quantize.rotate`) needs, both exact
    identities when built: ``final_mix``, ``x -> x + x R`` after ``final_norm`` (``R`` a
    ``d x d`` ``Dense``: the final norm's scale in the rotated basis, so a tied head stays
    tied), ``mlp_hadamard`` a weightless `HadamardRotation` before each ``mlp_down``
    (QuaRot's online rotation, which that kernel absorbs).
    """

    vocab_size: int = 49152
    d_model: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    d_ff: int = 1536
    head_dim: int | None = None
    rms_eps: float = 1e-5
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    final_mix: bool = False
    mlp_hadamard: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
            if getattr(self, name) < 1:
                raise TfcompressError(f"{name} must be a positive integer, got "
                                      f"{getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise TfcompressError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                                  f"({self.n_kv_heads}) for grouped-query attention")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise TfcompressError(f"d_model ({self.d_model}) must be divisible by n_heads "
                                      f"({self.n_heads}), or give head_dim")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.head_dim % 2:
            raise TfcompressError(f"head_dim must be even for RoPE, got {self.head_dim}")

    def get_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> LlamaConfig:
        return cls(**config)

    def param_count(self) -> int:
        """Parameters of ``build_llama(self)`` by formula."""
        d, hd = self.d_model, self.head_dim
        attn = d * hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        block = attn + 3 * d * self.d_ff + 2 * d
        head = (0 if self.tie_embeddings else d * self.vocab_size) + d * d * self.final_mix
        return self.vocab_size * d + self.n_layers * block + d + head


@keras.saving.register_keras_serializable(package="tfcompress")
class RMSNorm(keras.layers.Layer):
    """``x / sqrt(mean(x**2) + eps) * scale`` over the last axis (computed in float32).

    The sum of squares is a dot product of each row with itself: a full-integer ``.tflite``
    then computes it as one int8 matmul accumulated in int32, where ``square`` then ``mean``
    would requantize every ``x**2`` to int8 first, a range whose rare outlier channels leave
    the typical squares at zero (SmolLM2's int8 export broke there first).
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        x32 = ops.cast(x, "float32")
        sum_sq = ops.matmul(ops.expand_dims(x32, -2), ops.expand_dims(x32, -1))[..., 0]
        norm = x32 * ops.rsqrt(sum_sq / x32.shape[-1] + self.epsilon)
        return ops.cast(norm * self.scale, x.dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def _eager() -> bool:
    """Whether ops run now on values (not traced into a graph: exports keep one graph)."""
    import tensorflow as tf

    return tf.executing_eagerly()


# sequences at least this long run attention as a graph when eager (`RotaryAttention.attend`):
# one trace (~0.1 s) per shape, repaid within a few calls; shorter ones stay eager
GRAPH_FROM = 128


def causal_attention(q, k, v, prefix: int, n_heads: int, n_kv_heads: int, head_dim: int):
    """`RotaryAttention.attend`'s math on rotated heads: each of the ``n_kv_heads`` key/value
    heads serves ``n_heads // n_kv_heads`` consecutive query heads; masked softmax by
    `bounded_masked_softmax`. Returns ``(b, t, n_heads * head_dim)``."""
    batch, length = ops.shape(q)[0], ops.shape(q)[1]
    group = n_heads // n_kv_heads
    if group > 1:
        k, v = ops.repeat(k, group, axis=2), ops.repeat(v, group, axis=2)
    q, k, v = (ops.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))
    scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / np.sqrt(head_dim)
    causal = ops.tril(ops.ones((length, length), dtype="bool"))
    if prefix:
        causal = ops.concatenate([ops.ones((length, prefix), dtype="bool"), causal], axis=1)
    weights = ops.cast(bounded_masked_softmax(ops.cast(scores, "float32"), causal[None, None]),
                       v.dtype)
    out = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))
    return ops.reshape(out, (batch, length, n_heads * head_dim))


@functools.cache
def _graph_attention(n_heads: int, n_kv_heads: int, head_dim: int) -> Callable:
    """`causal_attention` as one ``tf.function`` per head layout, its shapes relaxed after
    the first few (kept for the process: a model has one or two layouts)."""
    import tensorflow as tf

    def attend(q, k, v, prefix):
        return causal_attention(q, k, v, prefix, n_heads, n_kv_heads, head_dim)

    return tf.function(attend, reduce_retracing=True)


@keras.saving.register_keras_serializable(package="tfcompress")
class RotaryAttention(keras.layers.Layer):
    """Causal grouped-query attention with rotary positions; takes projected ``[q, k, v]``.

    ``q`` is ``(batch, seq, n_heads * head_dim)``, ``k`` and ``v`` are
    ``(batch, seq, n_kv_heads * head_dim)``; each KV head serves ``n_heads // n_kv_heads``
    consecutive query heads. Returns ``(batch, seq, n_heads * head_dim)``.
    """

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int, rope_base: float = 1e4,
                 **kwargs):
        super().__init__(**kwargs)
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.rope_base = rope_base

    def _rope(self, x, cos, sin):
        half = self.head_dim // 2
        rotated = ops.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    def rotate(self, x, start: int = 0):
        """RoPE of ``x (batch, seq, heads, head_dim)`` at positions ``start, start + 1, ...``."""
        inv_freq = self.rope_base ** (
            -ops.arange(0, self.head_dim, 2, dtype="float32") / self.head_dim
        )
        positions = ops.arange(ops.shape(x)[1], dtype="float32") + float(start)
        angles = ops.expand_dims(positions, 1) * inv_freq[None, :]
        angles = ops.concatenate([angles, angles], axis=-1)[None, :, None, :]
        return self._rope(x, ops.cast(ops.cos(angles), x.dtype), ops.cast(ops.sin(angles), x.dtype))

    def heads(self, inputs) -> tuple:
        """Projected ``[q, k, v]`` split into heads: ``(batch, seq, heads, head_dim)`` each."""
        return tuple(ops.reshape(t, (ops.shape(t)[0], ops.shape(t)[1], heads, self.head_dim))
                     for t, heads in zip(inputs, (self.n_heads, self.n_kv_heads,
                                                  self.n_kv_heads), strict=True))

    def attend(self, q, k, v, prefix: int = 0):
        """Causal attention of rotated ``q (b, t, heads, hd)`` over rotated ``k`` and ``v``
        ``(b, prefix + t, kv_heads, hd)``, whose first ``prefix`` positions every query sees.

        Run eagerly on a batch, one sequence at a time: the ``(heads, t, t)`` scores and the
        softmax's temporaries of one sequence are alive at once, not the batch's (0.15 GB
        less at 4 x 512 tokens and 9 heads while calibrating), with the same values. From
        `GRAPH_FROM` positions on (calibration, evaluation windows) each sequence goes
        through one traced graph of the same ops, shared by every layer of this layout: the
        same values to float rounding in less than half the time (eager runs the masked
        softmax's dozen elementwise ops one by one)."""
        run, eager = self._attend, _eager()
        batch, length = ops.shape(q)[0], ops.shape(q)[1]
        if eager and not prefix and isinstance(length, int) and length >= GRAPH_FROM:
            run = _graph_attention(self.n_heads, self.n_kv_heads, self.head_dim)
        if isinstance(batch, int) and batch > 1 and eager and all(
                ops.shape(t)[0] == batch for t in (k, v)):
            return ops.concatenate([run(q[i:i + 1], k[i:i + 1], v[i:i + 1], prefix)
                                    for i in range(batch)], axis=0)
        return run(q, k, v, prefix)

    def _attend(self, q, k, v, prefix: int):
        return causal_attention(q, k, v, prefix, self.n_heads, self.n_kv_heads, self.head_dim)

    def call(self, inputs):
        q, k, v = self.heads(inputs)
        return self.attend(self.rotate(q), self.rotate(k), v)

    def compute_output_shape(self, input_shapes):
        return (*input_shapes[0][:-1], self.n_heads * self.head_dim)

    def get_config(self):
        return {**super().get_config(), "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "head_dim": self.head_dim, "rope_base": self.rope_base}


def build_llama(config: LlamaConfig, name: str = "llama") -> keras.Model:
    """A functional causal LM mapping token ids ``(batch, seq)`` to logits ``(batch, seq, vocab)``.

    Layers: ``token_embedding``, per block ``block{i}_attn_norm``, ``block{i}_attn_q/k/v``,
    ``block{i}_attention``, ``block{i}_attn_out``, ``block{i}_mlp_norm``,
    ``block{i}_mlp_gate/up/down`` (``block{i}_mlp_hadamard`` before ``down`` with
    ``mlp_hadamard``); then ``final_norm``, ``final_mix`` (with ``final_mix``) and ``lm_head``
    (absent when tied).
    """
    if not isinstance(config, LlamaConfig):
        raise TfcompressError(f"config must be a LlamaConfig, got {type(config).__name__}")
    cfg = config
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embed_cls = TiedEmbedding if cfg.tie_embeddings else keras.layers.Embedding
    embedding = embed_cls(cfg.vocab_size, cfg.d_model, name="token_embedding",
                          embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02))
    x = embedding(ids)
    for i in range(cfg.n_layers):
        x = _block(x, cfg, f"block{i}")
    x = RMSNorm(cfg.rms_eps, name="final_norm")(x)
    if cfg.final_mix:  # x (I + R): R, small, keeps its precision when rounded to int8
        mix = keras.layers.Dense(cfg.d_model, use_bias=False, kernel_initializer="zeros",
                                 name="final_mix")(x)
        x = keras.layers.Add(name="final_mix_add")([x, mix])
    if cfg.tie_embeddings:
        logits = embedding(x, reverse=True)
    else:
        logits = keras.layers.Dense(cfg.vocab_size, use_bias=False, name="lm_head")(x)
    return keras.Model(ids, logits, name=name)


def build_llama_block(config: LlamaConfig, index: int) -> keras.Model:
    """Block ``index`` of `build_llama` alone: hidden states ``(batch, seq, d_model)`` in and
    out, its layers named as in the whole model (``block{index}_attn_q``...), so the same
    variable paths and `hf_llama_names` apply.

    Example:
        >>> block = build_llama_block(cfg, 3)
        >>> block(np.zeros((1, 5, cfg.d_model), "float32")).shape
        TensorShape([1, 5, 32])
    """
    # not named block{i}_*: the input is no member of the block (find_blocks)
    x = keras.Input(shape=(None, config.d_model), name="hidden_states")
    return keras.Model(x, _block(x, config, f"block{index}"), name=f"block{index}")


def _dense(units: int, name: str) -> keras.layers.Dense:
    return keras.layers.Dense(units, use_bias=False, name=name,
                              kernel_initializer=keras.initializers.RandomNormal(stddev=0.02))


def _block(x, cfg: LlamaConfig, prefix: str):
    """Pre-RMSNorm block: rotary GQA attention then a SwiGLU MLP, both residual."""
    hd = cfg.head_dim
    h = RMSNorm(cfg.rms_eps, name=f"{prefix}_attn_norm")(x)
    q = _dense(cfg.n_heads * hd, f"{prefix}_attn_q")(h)
    k = _dense(cfg.n_kv_heads * hd, f"{prefix}_attn_k")(h)
    v = _dense(cfg.n_kv_heads * hd, f"{prefix}_attn_v")(h)
    h = RotaryAttention(cfg.n_heads, cfg.n_kv_heads, hd, cfg.rope_base,
                        name=f"{prefix}_attention")([q, k, v])
    h = _dense(cfg.d_model, f"{prefix}_attn_out")(h)
    x = keras.layers.Add(name=f"{prefix}_add1")([x, h])
    h = RMSNorm(cfg.rms_eps, name=f"{prefix}_mlp_norm")(x)
    gate = keras.layers.Activation("silu", name=f"{prefix}_mlp_act")(
        _dense(cfg.d_ff, f"{prefix}_mlp_gate")(h))
    up = _dense(cfg.d_ff, f"{prefix}_mlp_up")(h)
    h = keras.layers.Multiply(name=f"{prefix}_mlp_mul")([gate, up])
    if cfg.mlp_hadamard:
        h = HadamardRotation(name=f"{prefix}_mlp_hadamard")(h)
    h = _dense(cfg.d_model, f"{prefix}_mlp_down")(h)
    return keras.layers.Add(name=f"{prefix}_add2")([x, h])


def hf_llama_names(cfg: LlamaConfig) -> dict[str, tuple[str, bool]]:
    """Hugging Face tensor name -> (Keras variable path, transpose) for `build_llama`."""
    names = {"model.embed_tokens.weight": ("token_embedding/embeddings", False),
             "model.norm.weight": ("final_norm/scale", False)}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = ("lm_head/kernel", True)
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_out",
             "mlp.gate_proj": "mlp_gate", "mlp.up_proj": "mlp_up", "mlp.down_proj": "mlp_down"}
    for i in range(cfg.n_layers):
        hf = f"model.layers.{i}."
        names[hf + "input_layernorm.weight"] = (f"block{i}_attn_norm/scale", False)
        names[hf + "post_attention_layernorm.weight"] = (f"block{i}_mlp_norm/scale", False)
        for src, dst in parts.items():
            names[f"{hf}{src}.weight"] = (f"block{i}_{dst}/kernel", True)
    return names


def assign_weights(model: keras.Model, tensors: Callable[[str], np.ndarray | None],
                   names: dict[str, tuple[str, bool]], source: str = "checkpoint") -> None:
    """Copy each named tensor into the model variable it maps to, checking shapes first.

    ``tensors(name)`` returns the float array stored under ``name`` or None when absent;
    ``names`` maps ``name -> (variable path, transpose)``. Raises `TfcompressError` naming
    the tensor when one is missing or has the wrong shape. Tensors are read one at a time,
    so peak memory stays near the model's own size.
    """
    variables = {v.path: v for v in model.weights}
    for tensor_name, (path, transpose) in names.items():
        if path not in variables:
            raise TfcompressError(f"model has no variable {path!r} for tensor {tensor_name!r}")
        array = tensors(tensor_name)
        if array is None:
            raise TfcompressError(f"{source} has no tensor {tensor_name!r} "
                                  f"(needed for {path})")
        array = np.asarray(array, dtype=np.float32)
        array = array.T if transpose else array
        target = tuple(variables[path].shape)
        if array.shape != target:
            shown = array.T.shape if transpose else array.shape
            raise TfcompressError(f"tensor {tensor_name!r} in {source} has shape {shown}, "
                                  f"expected {target[::-1] if transpose else target} for {path}")
        variables[path].assign(array)


def lm_windows(ids: np.ndarray, window: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a token stream into consecutive ``(inputs, targets)`` windows of ``window`` targets.

    Every token after the first is a target exactly once; each window starts with no
    context from the previous one (the window length is the model's context).
    """
    ids = np.asarray(ids, dtype=np.int32).reshape(-1)
    if window < 1:
        raise TfcompressError(f"window must be a positive number of tokens, got {window}")
    if ids.size < 2:
        raise TfcompressError(f"ids must hold at least 2 tokens, got {ids.size}")
    return [(ids[None, s:min(s + window, ids.size - 1)], ids[None, s + 1:s + 1 + window])
            for s in range(0, ids.size - 1, window)]


def causal_lm_perplexity(predict: Callable[[np.ndarray], np.ndarray], ids: np.ndarray,
                         window: int = 512, verbose: int = 0) -> dict:
    """Perplexity of ``predict`` (ids -> logits) on a token stream, in independent windows.

    ``len(ids) - 1`` tokens are scored, each seeing at most ``window`` tokens of context
    (see `lm_windows`). Windows run one at a time so memory stays flat.

    Example:
        >>> causal_lm_perplexity(keras_forward(model), tokenizer.encode(text)[:2049], 256)
    """
    from tfcompress.core.quality import lm_quality

    batches = lm_windows(ids, window)
    if verbose:
        bar = progress_bar(len(batches), unit_name="window")
        inner = predict

        def predict(x):
            out = inner(x)
            bar.add(1)
            return out
    return lm_quality(predict, batches)


def generate(predict: Callable[[np.ndarray], np.ndarray], prompt: Sequence[int],
             max_new_tokens: int = 32, seq_len: int | None = None,
             stop_ids: Sequence[int] = ()) -> list[int]:
    """Deprecated: use `tfcompress.generate` (it returns the prompt followed by the new ids).

    The new ids only, as before."""
    import warnings

    from tfcompress.core.generation import generate as generate_ids

    warnings.warn("tfcompress.models.generate is deprecated and will be removed in the next "
                  "release: use tfcompress.generate(predict, prompt_ids, ...), which returns "
                  "the prompt followed by the new ids", FutureWarning, stacklevel=2)
    if not len(prompt):
        raise TfcompressError("prompt must hold at least one token id")
    ids = generate_ids(predict, prompt, max_new_tokens, seq_len, stop_ids=stop_ids)
    return ids[len(prompt):].tolist()


def llama_config_of(model: keras.Model) -> LlamaConfig:
    """The `LlamaConfig` of a model made by `build_llama` (read back from its layers)."""
    try:
        attention = model.get_layer("block0_attention")
        embedding = model.get_layer("token_embedding")
        n_layers = sum(1 for la in model.layers if isinstance(la, RotaryAttention))
        names = {la.name for la in model.layers}
        return LlamaConfig(
            vocab_size=embedding.input_dim, d_model=embedding.output_dim, n_layers=n_layers,
            n_heads=attention.n_heads, n_kv_heads=attention.n_kv_heads,
            # the output width, not Dense.units: a factorized (low-rank) layer has no units
            d_ff=int(model.get_layer("block0_mlp_gate").output.shape[-1]),
            head_dim=attention.head_dim,
            rms_eps=model.get_layer("final_norm").epsilon, rope_base=attention.rope_base,
            tie_embeddings="lm_head" not in names, final_mix="final_mix" in names,
            mlp_hadamard="block0_mlp_hadamard" in names)
    except ValueError as err:
        raise TfcompressError(f"model {model.name!r} was not made by build_llama: {err}") from err


def take_layers(model: keras.Model, keep: Sequence[int], name: str = "llama_student"):
    """A shallower `build_llama` model holding blocks ``keep`` of ``model`` (weights copied).

    Embeddings, final norm and head are copied too: the usual initialisation of a distilled
    student (e.g. ``keep=range(0, 30, 2)`` for half the depth). ``model`` is not changed.
    """
    cfg = llama_config_of(model)
    keep = [int(i) for i in keep]
    if not keep or any(not 0 <= i < cfg.n_layers for i in keep):
        raise TfcompressError(f"keep must list block indices in [0, {cfg.n_layers}), got {keep}")
    student = build_llama(LlamaConfig(**{**cfg.get_config(), "n_layers": len(keep)}), name=name)
    copy_kept_blocks(model, student, keep)
    return student


register_shallow_copy("llama", lambda m: "block0_attention" in {la.name for la in m.layers},
                      take_layers)
