"""Residual-stream rotation (QuaRot / SpinQuant): spread activation outliers over all channels.

A pre-norm decoder's residual stream ``x`` only meets its weights through RMSNorms (which see
``|x|``, unchanged by an orthogonal ``Q``) and matmuls. So once every RMSNorm's scale is
folded into the matmuls it feeds (scale becomes 1), the stream can be carried rotated,
``x Q``: the embedding becomes ``E Q``, every matmul reading the stream ``Q^T W``, every matmul
writing it ``W Q``, and the head ``Q^T diag(g_final) H``. The float function is unchanged,
while a massive activation in one channel (SmolLM2: ~2.4e4 in channel 507) is spread over all
of them by a (randomised) Hadamard ``Q``, so per-row int8 activations lose less. Weights
are mixed too: on SmolLM2 int4 GPTQ (act-order) lost less after rotation, round-to-nearest
far more (its GGUF weights already sat on a 4-bit grid that rotation undoes; see
``benchmarks/rotation.py``), so rotate before GPTQ, not before RTN.

A tied head cannot take the final norm's scale (the table is also the embedding). A tied
`build_llama` model keeps its head tied: it comes back with ``final_mix``, ``x -> x (I + R)``
after its final norm, whose scale becomes uniform, ``mean(g)``, with ``I + R = Q^T diag(g /
mean(g)) Q`` (`mix_residual`), ``d**2`` more weights (SmolLM2: 0.33 M, +0.3 MB int8 in a
bundle), which `export_llm` reads. A tied KerasHub
model, whose backbone has no place for that matrix, comes back untied with its own head:
``vocab * d`` more weights (SmolLM2: 28.3 M, +29.6 MB in its int4 bundle).

``online=True`` (a `build_llama` model) also rotates the MLP's hidden state before each down
projection by a Hadamard ``H`` computed at run time (QuaRot's online rotation,
`tfcompress.models.layers.HadamardRotation`, a few matmuls of at most 16 x 16), the down
kernel absorbing ``H^T``: the SwiGLU product's outlier channels are spread before its
activations are rounded.

Example:
    >>> rotated = rotate(model)          # a copy (a tied KerasHub model comes back untied)
    >>> np.allclose(rotated(ids), model(ids), rtol=1e-3, atol=1e-3)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tfcompress.core.hadamard import hadamard, sylvester
from tfcompress.core.layers import (
    copy_model,
    iter_layers,
    kernel_matrix,
    kernel_of,
    set_kernel_matrix,
)
from tfcompress.errors import TfcompressError
from tfcompress.quantize.smooth import (
    HUB_DECODERS,
    SmoothGroup,
    fold_scales,
    hub_decoder_groups,
    sub_layer,
)

HUB_ARCHITECTURE = "keras_hub LlamaCausalLM / Qwen2CausalLM / MistralCausalLM"
# KerasHub decoders whose residual stream is only read by pre-norms (their readers listed in
# smooth.HUB_DECODERS) and written by these two matmuls
HUB_WRITERS = {kind: ("_self_attention_layer._output_dense", "_feedforward_output_dense")
               for kind in HUB_DECODERS if kind != "TransformerDecoder"}


def rotation_matrix(d: int, seed: int | None = 0) -> np.ndarray:
    """An orthogonal ``d x d`` matrix ``diag(signs) H / sqrt(d)``: a Hadamard ``H`` when
    `hadamard` can build one, else Sylvester's largest ``2^k`` factor times a random
    orthogonal factor; ``signs`` random +-1 drawn from ``seed`` (None: all +1).

    Example:
        >>> q = rotation_matrix(24)
        >>> np.allclose(q @ q.T, np.eye(24))
        True
    """
    if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1:
        raise TfcompressError(f"d must be a positive integer, got {d!r}")
    rng = np.random.default_rng(seed)
    h = hadamard(int(d))
    if h is None:
        two = d & -d  # the largest power of two dividing d
        gauss = rng.standard_normal((d // two, d // two))
        r, upper = np.linalg.qr(gauss)
        r *= np.sign(np.diag(upper))  # Haar-distributed, not biased by QR's sign choice
        h = np.kron(sylvester(two), r * np.sqrt(d // two))
    signs = np.ones(d) if seed is None else rng.choice([-1.0, 1.0], d)
    return signs[:, None] * h / np.sqrt(d)


@dataclass
class ResidualStream:
    """Every weight touching a decoder's residual stream: the token table ``(vocab, d)``,
    the pre-norms with the matmuls reading them, the matmuls writing the stream, and the
    final norm's scale with the ``d x d`` ``final_mix`` and the head ``(d, vocab)`` it feeds
    (None: absent, tied)."""

    embedding: object
    groups: list[SmoothGroup]
    writers: list
    final_scale: object
    head: object
    mix: object = None

    @property
    def width(self) -> int:
        return int(self.embedding.shape[-1])


@dataclass(frozen=True)
class RotationFamily:
    """How `rotate` reaches a model family other than KerasHub's decoders (registered by the
    family's own module: `tfcompress.models.llama_rotation` for `build_llama`).

    ``stream(model)``: its `ResidualStream` (any exception: not this family);
    ``plan(model, tied, online)``: the config ``changes`` a rotated copy needs and why, in
    words (``{}, []``: rotate it as it is); ``rebuild(model, changes)``: that copy, weights
    copied, any online rotation absorbed.
    """

    name: str
    stream: Callable
    plan: Callable
    rebuild: Callable


_FAMILIES: dict[str, RotationFamily] = {}


def register_rotation_family(family: RotationFamily) -> None:
    """Let `rotate` reach ``family``'s models (registering a name again replaces it)."""
    _FAMILIES[family.name] = family


def architectures() -> list[str]:
    """What `rotate` reaches: every registered family and KerasHub's pre-norm decoders."""
    return [*_FAMILIES, HUB_ARCHITECTURE]


def _family_stream(model) -> tuple[RotationFamily, ResidualStream]:
    errors = []
    for family in _FAMILIES.values():
        try:
            return family, family.stream(model)
        except (TfcompressError, ValueError, AttributeError, KeyError) as err:
            errors.append(str(err))
    raise TfcompressError(
        f"rotate supports {', '.join(architectures())}; model {model.name!r} "
        f"({type(model).__name__}) is none of them ({'; '.join(errors)})")


def _hub_stream(model) -> ResidualStream:
    backbone = model.backbone
    groups, writers = [], []
    for block in backbone.transformer_layers:
        groups += hub_decoder_groups(block)
        writers += [sub_layer(block, w) for w in HUB_WRITERS[type(block).__name__]]
    embedding = backbone.token_embedding
    head = None if embedding.tie_weights else embedding.reverse_embeddings
    return ResidualStream(embedding.embeddings, groups, writers, backbone.layer_norm.scale,
                          head)


def _is_hub(model) -> bool:
    layers = getattr(getattr(model, "backbone", None), "transformer_layers", None)
    return bool(layers) and all(type(la).__name__ in HUB_WRITERS for la in layers)


def residual_stream(model) -> ResidualStream:
    """The `ResidualStream` of a `build_llama` model or a KerasHub Llama-family CausalLM,
    or `TfcompressError` saying which architectures are supported and what did not fit."""
    if _is_hub(model):
        stream = _hub_stream(model)
        n_blocks = len(model.backbone.transformer_layers)
    else:
        _, stream = _family_stream(model)
        n_blocks = len(stream.writers) // 2
    d = stream.width
    matmuls = [la for g in stream.groups for la in g.layers] + stream.writers
    bad = [la.name for la in matmuls if la is None or kernel_of(la) is None]
    if len(stream.groups) != 2 * n_blocks or bad:
        raise TfcompressError(
            f"model {model.name!r}: every block needs two RMSNorms feeding plain matmuls and "
            f"two float output matmuls to rotate; found {len(stream.groups)} norms for "
            f"{n_blocks} blocks, matmuls without a kernel (low-rank?): {bad}")
    widths = {kernel_matrix(la).shape[0] for g in stream.groups for la in g.layers}
    widths |= {kernel_matrix(la).shape[1] for la in stream.writers}
    if widths != {d}:
        raise TfcompressError(f"model {model.name!r}: its matmuls read/write widths "
                              f"{sorted(widths)}, not the residual width {d}")
    return stream


def _untied(model):
    """A copy of the tied KerasHub ``model`` with its own head ``E^T`` (same logits)."""
    backbone = model.backbone
    config = {**backbone.get_config(), "tie_word_embeddings": False}
    clone = type(model)(backbone=type(backbone).from_config(config),
                        preprocessor=getattr(model, "preprocessor", None))
    targets = {path: la for path, la in iter_layers(clone)}
    for path, layer in iter_layers(model):
        if not layer._flatten_layers(include_self=False) and layer.weights:
            for source, target in zip(layer.weights, targets[path].weights, strict=False):
                target.assign(source)  # the head is the one variable the tied layer lacks
    clone.backbone.token_embedding.reverse_embeddings.assign(
        np.asarray(backbone.token_embedding.embeddings.numpy()).T)
    return clone


def rotate_stream(stream: ResidualStream, q: np.ndarray, progress=None) -> None:
    """Fold every norm scale into the matmuls it feeds, then rotate the stream by ``q``, in
    place: ``E -> E q``, readers ``W -> q^T W``, writers ``W -> W q`` (bias ``b -> b q``),
    head ``H -> q^T diag(g) H``, or with a ``final_mix`` (`mix_residual`; an untied head
    ``H -> q^T H``)."""
    q = np.asarray(q, np.float64)
    for g in stream.groups:
        gamma = np.asarray(g.gamma.numpy(), np.float64)
        _, _, folded = fold_scales(gamma, gamma, None, [kernel_matrix(la) for la in g.layers])
        for layer, kernel in zip(g.layers, folded, strict=True):
            set_kernel_matrix(layer, q.T @ kernel)
        g.gamma.assign(np.ones(g.width, g.gamma.dtype))
        if progress:
            progress()
    for layer in stream.writers:
        set_kernel_matrix(layer, kernel_matrix(layer) @ q)
        bias = getattr(layer, "bias", None)
        if bias is not None:
            bias.assign((np.asarray(bias.numpy(), np.float64).reshape(-1) @ q)
                        .reshape(bias.shape).astype(bias.dtype))
    gamma = np.asarray(stream.final_scale.numpy(), np.float64)
    if stream.mix is not None:  # the mix now reads and writes the rotated stream
        c, residual = mix_residual(gamma, np.asarray(stream.mix.numpy(), np.float64), q)
        _assign(stream.mix, residual)
        if stream.head is not None:
            _assign(stream.head, q.T @ stream.head.numpy())
    else:
        c = 1.0
        _assign(stream.head, q.T @ (gamma[:, None] * stream.head.numpy()))
    stream.final_scale.assign(np.full_like(gamma, c, dtype=stream.final_scale.dtype))
    stream.embedding.assign((stream.embedding.numpy() @ q).astype(stream.embedding.dtype))


def mix_residual(gamma: np.ndarray, residual: np.ndarray, q: np.ndarray
                 ) -> tuple[float, np.ndarray]:
    """``(c, R')`` for a final norm of scale ``gamma`` feeding ``x -> x (I + R)`` (``R =
    residual``), the stream rotated by ``q``: the norm's scale becomes ``c = mean(gamma)`` (a
    uniform scale commutes with ``q``) and ``I + R' = q^T diag(gamma / c) (I + R) q``.
    Stored as ``R'``, small next to ``I`` (SmolLM2: <= 0.025), so its int8 per-channel
    rounding keeps its precision; ``I + R'`` itself would leave the off-diagonal part a few
    int8 steps.

    Example:
        >>> mix_residual(np.array([2.0, 4.0]), np.zeros((2, 2)), np.eye(2))
        (3.0, array([[-0.33333333,  0.        ],
               [ 0.        ,  0.33333333]]))
    """
    c = float(np.mean(gamma)) or 1.0
    d = len(gamma)
    mix = q.T @ ((gamma / c)[:, None] * (np.eye(d) + residual)) @ q
    return c, mix - np.eye(d)


def _assign(variable, value) -> None:
    variable.assign(np.asarray(value).astype(variable.dtype))


def check_rotation(matrix, d: int) -> np.ndarray:
    """``matrix`` as a float64 ``(d, d)`` array with ``M M^T = I`` (to 1e-5), or
    `TfcompressError` naming ``matrix``."""
    m = np.asarray(matrix, np.float64)
    if m.shape != (d, d):
        raise TfcompressError(f"matrix must be ({d}, {d}) (the residual width), got shape "
                              f"{m.shape}")
    err = float(np.abs(m @ m.T - np.eye(d)).max())
    if err > 1e-5:
        raise TfcompressError(f"matrix must be orthogonal (M M^T = I), got max |M M^T - I| = "
                              f"{err:.3g}")
    return m


def _plan(model, tied: bool, online: bool) -> tuple[RotationFamily | None, dict, list[str]]:
    """``(family, config changes, why in words)`` of a rotated copy of ``model`` (``family``
    None for a KerasHub model, whose one change is `_untied`), or `TfcompressError` when
    ``online`` cannot hold."""
    if not _is_hub(model):
        family, _ = _family_stream(model)
        return (family, *family.plan(model, tied, online))
    if online:
        raise TfcompressError(
            f"online=True needs a build_llama model (a place for the Hadamard before each "
            f"down projection); model {model.name!r} is a KerasHub "
            f"{type(model).__name__}: pass online=False")
    why = ["ties its head to its embedding (a KerasHub copy comes back untied)"] * tied
    return None, {"untie": True} if tied else {}, why


def rotation_changes(model, online: bool = False) -> dict[str, str]:
    """What `rotate(model, online=online)` adds to its copy, each change with why in words
    (``{}``: the same layers; ``"untie"``: a tied KerasHub model's copy gets its own head),
    or the `TfcompressError` it would raise; ``model`` is not changed.

    Example:
        >>> tiny = build_llama(LlamaConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2,
        ...                                n_kv_heads=1, d_ff=32))   # its head tied
        >>> sorted(rotation_changes(tiny, online=True))
        ['final_mix', 'mlp_hadamard']
    """
    from tfcompress.core.validation import check_model

    check_model(model, "rotate")
    stream = residual_stream(model)
    _, changes, why = _plan(model, stream.head is None and stream.mix is None, online)
    return dict(zip(changes, why, strict=True))


def _rotation_target(model, tied: bool, online: bool, inplace: bool):
    """The model to rotate: ``model`` itself (``inplace``), a copy, or a copy with the layers
    rotation needs (its family's `RotationFamily.rebuild`, `_untied`); refused before any
    work when ``inplace`` cannot hold."""
    family, changes, why = _plan(model, tied, online)
    if why and inplace:
        raise TfcompressError(f"model {model.name!r} {' and '.join(why)}, so rotate returns "
                              "a copy: pass inplace=False")
    if family is None and changes:
        return _untied(model)
    if changes:
        return family.rebuild(model, changes)
    return model if inplace else copy_model(model)


def rotate(model, seed: int | None = 0, *, matrix=None, online: bool = False,
           inplace: bool = False, verbose: int = 1):
    """A copy of ``model`` computing the same float function on a rotated residual stream.

    ``model``: a `build_llama` model (what `load_gguf` returns) or a KerasHub pre-norm
    Llama-family CausalLM (``LlamaCausalLM``, ``Qwen2CausalLM``, ``MistralCausalLM``), with
    float weights. ``seed`` draws the Hadamard's random signs (None: plain Hadamard);
    ``matrix``, a ``(d, d)`` orthogonal array, replaces that Hadamard (``np.eye(d)`` only
    folds the norm scales, e.g. a learned SpinQuant rotation goes here). ``online``: also
    rotate each MLP's hidden state before its down projection (`build_llama` models). A tied
    model gains a ``final_mix`` layer (KerasHub: comes back untied) and ``online`` adds
    layers (see the module docstring), so ``inplace=True`` (change ``model`` itself) needs
    neither. ``verbose`` shows a progress bar over the norms.

    Example:
        >>> rotated = rotate(load_gguf(path), online=True)   # still tied
        >>> q4 = quantize(rotated, GPTQConfig.litert_int4(act_order=True),
        ...               calibration=windows)
    """
    import keras

    from tfcompress.core.validation import check_model

    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise TfcompressError(f"seed must be a non-negative integer or None, got {seed!r}")
    check_model(model, "rotate")
    stream = residual_stream(model)  # checked before any work
    q = (rotation_matrix(stream.width, seed) if matrix is None
         else check_rotation(matrix, stream.width))
    target = _rotation_target(model, stream.head is None and stream.mix is None, online,
                              inplace)
    stream = residual_stream(target)
    bar = keras.utils.Progbar(len(stream.groups), unit_name="norm") if verbose else None
    rotate_stream(stream, q, bar and (lambda: bar.add(1)))
    return target
