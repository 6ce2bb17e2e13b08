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

A tied head cannot take the final norm's scale (the table is also the embedding), so a tied
model comes back untied, with its own ``lm_head``: ``vocab * d`` more weights (SmolLM2:
28.3 M, +113 MB float32, +29.6 MB in its int4 `export_llm` bundle, whose head is int8).
A ``d x d`` un-rotation before a tied head would cost only ``d**2`` weights, but it is a layer
neither `export_llm`'s reader nor a KerasHub backbone has a place for.

Example:
    >>> rotated = rotate(model)          # a copy (untied if ``model`` was tied)
    >>> np.allclose(rotated(ids), model(ids), rtol=1e-3, atol=1e-3)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    smoothing_groups,
    sub_layer,
)

ARCHITECTURES = ("llama (tfcompress.models.build_llama, load_gguf)",
                 "keras_hub LlamaCausalLM / Qwen2CausalLM / MistralCausalLM")
# KerasHub decoders whose residual stream is only read by pre-norms (their readers listed in
# smooth.HUB_DECODERS) and written by these two matmuls
HUB_WRITERS = {kind: ("_self_attention_layer._output_dense", "_feedforward_output_dense")
               for kind in HUB_DECODERS if kind != "TransformerDecoder"}


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, int(n ** 0.5) + 1))


def paley_hadamard(q: int) -> np.ndarray:
    """The ``(q+1) x (q+1)`` Hadamard matrix of Paley's first construction, ``q`` a prime
    with ``q % 4 == 3``: ``I + [[0, 1^T], [-1, C]]``, ``C_ij`` the Legendre symbol of ``j - i``.

    Example:
        >>> h = paley_hadamard(3)
        >>> (h @ h.T == 4 * np.eye(4)).all()
        True
    """
    if not _is_prime(q) or q % 4 != 3:
        raise TfcompressError(f"q must be a prime with q % 4 == 3, got {q}")
    chi = np.array([0] + [1 if pow(a, (q - 1) // 2, q) == 1 else -1 for a in range(1, q)])
    jacobsthal = chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]
    s = np.zeros((q + 1, q + 1))
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jacobsthal
    return np.eye(q + 1) + s


def hadamard(n: int) -> np.ndarray | None:
    """A ``n x n`` matrix of +-1 with ``H H^T = n I`` (Sylvester's ``2^k`` times a Paley
    factor of order ``q + 1``), or None when neither construction reaches ``n``.

    Example:
        >>> hadamard(576).shape         # 8 x 72 (Paley, q = 71)
        (576, 576)
    """
    two = n & -n  # the largest power of two dividing n
    while two >= 1:  # the largest Sylvester factor whose cofactor Paley can build
        m = n // two
        if m == 1:
            return _sylvester(two)
        if _is_prime(m - 1) and (m - 1) % 4 == 3:
            return np.kron(paley_hadamard(m - 1), _sylvester(two))
        two //= 2
    return None


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


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
        h = np.kron(_sylvester(two), r * np.sqrt(d // two))
    signs = np.ones(d) if seed is None else rng.choice([-1.0, 1.0], d)
    return signs[:, None] * h / np.sqrt(d)


@dataclass
class ResidualStream:
    """Every weight touching a decoder's residual stream: the token table ``(vocab, d)``,
    the pre-norms with the matmuls reading them, the matmuls writing the stream, and the
    final norm's scale with the head ``(d, vocab)`` it feeds."""

    embedding: object
    groups: list[SmoothGroup]
    writers: list
    final_scale: object
    head: object

    @property
    def width(self) -> int:
        return int(self.embedding.shape[-1])


def _port_stream(model) -> ResidualStream:
    from tfcompress.models.llama import llama_config_of

    cfg = llama_config_of(model)
    final = model.get_layer("final_norm")
    groups = [g for g in smoothing_groups(model) if g.norm is not final]
    writers = [model.get_layer(f"block{i}_{part}") for i in range(cfg.n_layers)
               for part in ("attn_out", "mlp_down")]
    head = model.get_layer("lm_head").kernel if not cfg.tie_embeddings else None
    return ResidualStream(model.get_layer("token_embedding").embeddings, groups, writers,
                          final.scale, head)


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
        try:
            stream = _port_stream(model)
        except (TfcompressError, ValueError, AttributeError) as err:
            raise TfcompressError(
                f"rotate supports {', '.join(ARCHITECTURES)}; model {model.name!r} "
                f"({type(model).__name__}) is none of them ({err})") from err
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
    """A copy of the tied ``model`` with its own head ``E^T`` (same logits)."""
    if _is_hub(model):
        backbone = model.backbone
        config = {**backbone.get_config(), "tie_word_embeddings": False}
        clone = type(model)(backbone=type(backbone).from_config(config),
                            preprocessor=getattr(model, "preprocessor", None))
        new_backbone, table = clone.backbone, backbone.token_embedding.embeddings
        head = new_backbone.token_embedding.reverse_embeddings
    else:
        from tfcompress.models.llama import LlamaConfig, build_llama, llama_config_of

        config = {**llama_config_of(model).get_config(), "tie_embeddings": False}
        clone = build_llama(LlamaConfig(**config), name=model.name)
        table = model.get_layer("token_embedding").embeddings
        head = clone.get_layer("lm_head").kernel
    targets = {path: la for path, la in iter_layers(clone)}
    for path, layer in iter_layers(model):
        if not layer._flatten_layers(include_self=False) and layer.weights:
            for source, target in zip(layer.weights, targets[path].weights, strict=False):
                target.assign(source)  # the head is the one variable the tied layer lacks
    head.assign(np.asarray(table.numpy()).T)
    return clone


def rotate_stream(stream: ResidualStream, q: np.ndarray, progress=None) -> None:
    """Fold every norm scale into the matmuls it feeds, then rotate the stream by ``q``, in
    place: ``E -> E q``, readers ``W -> q^T W``, writers ``W -> W q`` (bias ``b -> b q``),
    head ``H -> q^T diag(g) H``."""
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
    stream.head.assign((q.T @ (gamma[:, None] * stream.head.numpy())).astype(stream.head.dtype))
    stream.final_scale.assign(np.ones_like(gamma, dtype=stream.final_scale.dtype))
    stream.embedding.assign((stream.embedding.numpy() @ q).astype(stream.embedding.dtype))


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


def rotate(model, seed: int | None = 0, *, matrix=None, inplace: bool = False,
           verbose: int = 1):
    """A copy of ``model`` computing the same float function on a rotated residual stream.

    ``model``: a `build_llama` model (what `load_gguf` returns) or a KerasHub pre-norm
    Llama-family CausalLM (``LlamaCausalLM``, ``Qwen2CausalLM``, ``MistralCausalLM``), with
    float weights. ``seed`` draws the Hadamard's random signs (None: plain Hadamard);
    ``matrix``, a ``(d, d)`` orthogonal array, replaces that Hadamard (``np.eye(d)`` only
    folds the norm scales, e.g. a learned SpinQuant rotation goes here). A tied
    model comes back untied (see the module docstring), so ``inplace=True`` (change ``model``
    itself) needs an untied one. ``verbose`` shows a progress bar over the norms.

    Example:
        >>> rotated = rotate(load_gguf(path))
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
    tied = stream.head is None
    if tied and inplace:
        raise TfcompressError(
            f"model {model.name!r} ties its head to its embedding, so rotate returns an "
            "untied copy (the final norm's scale cannot fold into a shared table): pass "
            "inplace=False")
    target = _untied(model) if tied else model if inplace else copy_model(model)
    stream = residual_stream(target)
    bar = keras.utils.Progbar(len(stream.groups), unit_name="norm") if verbose else None
    rotate_stream(stream, q, bar and (lambda: bar.add(1)))
    return target
