"""Activation smoothing (SmoothQuant, Xiao et al. 2022): move activation outliers into weights.

A full-integer file gives each activation tensor one int8 scale, so a few outlier channels
after a normalization squeeze every other channel into a handful of levels. Smoothing divides
input channel ``j`` of a matmul by ``s_j = max|X_j|^a / max|W_j|^(1-a)`` and multiplies the
kernel's input row ``j`` by ``s_j``: the product is unchanged, the activation's channels are
flattened, and the weights (quantized per output channel) take part of the range. The
division is folded into the preceding normalization's ``gamma`` and ``beta``, so the float
model computes the same function. Layers reading the same normalized tensor (q/k/v after the
attention norm, gate/up after the MLP norm) share one ``s``.

Example:
    >>> smoothed = smooth(model, calibration=windows, strength=0.5)   # a copy; model unchanged
    >>> export_tflite(model, "m.tflite", "int8", 128, calibration=windows, smooth=0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tfcompress.core.compressor import Compressor
from tfcompress.core.layers import (
    copy_model,
    iter_layers,
    kernel_matrix,
    kernel_of,
    layer_paths,
    matrix_shape,
    set_kernel_matrix,
)
from tfcompress.errors import TfcompressError

# clamps of the reference implementation: no zero weight row makes s infinite
MIN_WEIGHT_MAX = 1e-5
MIN_SCALE = 1e-5


def check_strength(strength, arg: str = "strength") -> float:
    """``strength`` as a float in [0, 1] (SmoothQuant's alpha), or `TfcompressError` naming
    ``arg``."""
    if (isinstance(strength, bool) or not isinstance(strength, int | float)
            or not 0 <= strength <= 1):
        raise TfcompressError(f"{arg} (the smoothing migration strength) must be a number in "
                              f"[0, 1] (0.5 is the usual choice), got {strength!r}")
    return float(strength)


def smoothing_scales(act_max, weight_max, strength: float = 0.5) -> np.ndarray:
    """``s_j = max|X_j|^strength / max|W_j|^(1-strength)`` per input channel.

    ``act_max``: ``max |x_j|`` over calibration rows; ``weight_max``: ``max |W_jk|`` over the
    outputs ``k`` of every kernel reading the channel (see `weight_maxima`). Channels that
    were never non-zero keep ``s = 1``; weights are clamped at 1e-5 and ``s`` at 1e-5 below.

    Example:
        >>> smoothing_scales([4.0, 1.0], [1.0, 4.0], 0.5)
        array([2. , 0.5])
    """
    strength = check_strength(strength)
    act = np.asarray(act_max, np.float64)
    w = np.maximum(np.asarray(weight_max, np.float64), MIN_WEIGHT_MAX)
    if act.shape != w.shape or act.ndim != 1:
        raise TfcompressError(f"act_max and weight_max must be vectors of one length, got "
                              f"shapes {act.shape} and {w.shape}")
    s = np.maximum(act ** strength / w ** (1 - strength), MIN_SCALE)
    return np.where(act > 0, s, 1.0)


def weight_maxima(kernels: Sequence[np.ndarray]) -> np.ndarray:
    """``max |W_jk|`` over every output ``k`` of every ``(d_in, d_out)`` kernel, per input row
    ``j`` (the kernels that share one input share one ``s``).

    Example:
        >>> weight_maxima([np.array([[1., -3.], [2., 0.]]), np.array([[0.5], [-4.]])])
        array([3., 4.])
    """
    return np.max([np.abs(np.asarray(k)).max(axis=1) for k in kernels], axis=0)


def fold_scales(s, gamma, beta=None, kernels: Sequence[np.ndarray] = ()):
    """``(gamma / s, beta / s, [k * s[:, None]])``: the norm's output divided per channel by
    ``s`` and each following ``(d_in, d_out)`` kernel's input rows multiplied by it, so
    ``norm(x) @ k`` is unchanged. ``beta`` None (RMSNorm) stays None.

    Example:
        >>> fold_scales(np.array([2.0]), np.array([4.0]), np.array([1.0]), [np.ones((1, 2))])
        (array([2.]), array([0.5]), [array([[2., 2.]])])
    """
    s = np.asarray(s, np.float64)
    return (np.asarray(gamma) / s, None if beta is None else np.asarray(beta) / s,
            [np.asarray(k) * s[:, None] for k in kernels])


@dataclass
class SmoothGroup:
    """A normalization and the matmuls that read its output (and nothing else does)."""

    norm: object
    gamma: object
    beta: object | None
    layers: list

    @property
    def width(self) -> int:
        return int(self.gamma.shape[-1])


def _affine(norm) -> tuple[object, object | None] | None:
    """The per-channel ``(gamma, beta)`` variables that end ``norm``'s computation, or None
    when it is no normalization with one (or has no learnable gamma)."""
    kind = type(norm).__name__
    if kind == "LayerNormalization" and getattr(norm, "scale", False):
        axes = tuple(np.atleast_1d(norm.axis))
        last = len(norm.input.shape) - 1 if norm._inbound_nodes else -1
        if axes not in ((-1,), (last,)):
            return None
        return norm.gamma, norm.beta if norm.center else None
    # norms whose output is ``normalized * scale`` (Gemma's ``* (1 + scale)`` is not)
    plain_scale = {"RMSNorm": "tfcompress.", "RMSNormalization": "keras.src.",
                   "LlamaLayerNorm": "keras_hub.src.models.llama.",
                   "QwenLayerNorm": "keras_hub.src.models.qwen.",
                   "MistralLayerNormalization": "keras_hub.src.models.mistral."}
    if type(norm).__module__.startswith(plain_scale.get(kind, "-")) and hasattr(norm, "scale"):
        scale = norm.scale
        return (scale, None) if hasattr(scale, "assign") else None
    return None


def _readers(node, tensor) -> list | None:
    """The matmul layers that ``node``'s operation applies to ``tensor``, or None when it
    does anything else with it (so the normalization cannot be rescaled)."""
    op = node.operation
    inputs = list(node.input_tensors)
    if not inputs or any(t is not tensor for t in inputs):
        return None  # e.g. a residual add, or cross-attention to another tensor
    kind = type(op).__name__
    if kind in ("Dense", "EinsumDense") and kernel_of(op) is not None:
        return [op]
    if kind == "MultiHeadAttention":  # self-attention: q, k and v all read the tensor
        return [op._query_dense, op._key_dense, op._value_dense]
    return None


_QKV = ("_query_dense", "_key_dense", "_value_dense")
# KerasHub decoder layers apply their norms inside call(), out of the graph's sight:
# class -> ((norm attribute, (attributes of the matmuls reading it, "a.b" for nested))).
# Read from keras_hub's source; a TransformerDecoder only when it normalizes first.
HUB_DECODERS = {
    "TransformerDecoder": (
        ("_self_attention_layer_norm", tuple(f"_self_attention_layer.{a}" for a in _QKV)),
        ("_feedforward_layer_norm", ("_feedforward_intermediate_dense",))),
    **{kind: (
        ("_self_attention_layernorm", tuple(f"_self_attention_layer.{a}" for a in _QKV)),
        ("_feedforward_layernorm", ("_feedforward_gate_dense",
                                    "_feedforward_intermediate_dense")))
       for kind in ("LlamaTransformerDecoder", "QwenTransformerDecoder",
                    "MistralTransformerDecoder")},
}


def sub_layer(layer, dotted: str):
    """``layer``'s sub-layer at the dotted attribute path ``dotted``, None where one is missing."""
    for name in dotted.split("."):
        layer = getattr(layer, name, None)
    return layer


def hub_decoder_groups(layer) -> list[SmoothGroup]:
    """The (norm, matmuls reading it) groups inside one KerasHub decoder layer of `HUB_DECODERS`."""
    table = HUB_DECODERS.get(type(layer).__name__)
    if table is None or not getattr(layer, "normalize_first", True):
        return []
    groups = []
    for norm_name, reader_names in table:
        norm = sub_layer(layer, norm_name)
        readers = [sub_layer(layer, r) for r in reader_names]
        affine = None if norm is None else _affine(norm)
        if affine is not None and all(r is not None and kernel_of(r) is not None
                                      for r in readers):
            groups.append(SmoothGroup(norm, *affine, readers))
    return groups


def smoothing_groups(model) -> list[SmoothGroup]:
    """Every normalization in ``model``'s functional graphs (nested ones included) whose
    output is read only by Dense/EinsumDense layers or self-attention, with those layers;
    and the pre-norms of the KerasHub decoder layers in `HUB_DECODERS`.

    A norm called more than once, feeding anything else (a residual add, a tied embedding's
    transpose) or with a width other than its readers' input width is left out.
    """
    groups = []
    for _, norm in iter_layers(model):
        groups += hub_decoder_groups(norm)
        affine = _affine(norm)
        if affine is None or len(norm._inbound_nodes) != 1:
            continue
        out = norm._inbound_nodes[0].output_tensors
        if len(out) != 1 or not norm._outbound_nodes:
            continue
        readers: list = []
        for node in norm._outbound_nodes:
            found = _readers(node, out[0])
            if found is None:
                readers = []
                break
            readers += [la for la in found if all(la is not r for r in readers)]
        if not readers:
            continue
        gamma, beta = affine
        groups.append(SmoothGroup(norm, gamma, beta, readers))
    # a decoder's inner layers may also have graph nodes: each norm is folded once
    unique = list({id(g.norm): g for g in reversed(groups)}.values())[::-1]
    return [g for g in unique if all(matrix_shape(la)[0] == g.width for la in g.layers)]


class ActivationMax(Compressor):
    """``max |x_j|`` of each layer's inputs as a `Compressor` (the weights are left as they
    are): SmoothQuant's activation scales."""

    needs = ("max",)

    def compress_layer(self, path: str, layer, stats) -> np.ndarray:
        return stats.max_abs().copy()


def apply_smoothing(groups: Sequence[SmoothGroup], act_max: dict[int, np.ndarray],
                    strength: float) -> dict[str, np.ndarray]:
    """Fold the scales of each group (``act_max``: ``{id(norm): max |x_j|}``) into its
    norm and readers, in place; returns ``{norm name: s}``."""
    scales = {}
    for g in groups:
        kernels = [kernel_matrix(la) for la in g.layers]
        s = smoothing_scales(act_max[id(g.norm)], weight_maxima(kernels), strength)
        gamma, beta, folded = fold_scales(
            s, g.gamma.numpy(), None if g.beta is None else g.beta.numpy(), kernels)
        g.gamma.assign(gamma.astype(g.gamma.dtype))
        if g.beta is not None:
            g.beta.assign(beta.astype(g.beta.dtype))
        for la, k in zip(g.layers, folded, strict=True):
            set_kernel_matrix(la, k)
        scales[g.norm.name] = s
    return scales


def smooth(model, calibration, strength: float | None = None, *, inplace: bool = False,
           verbose: int = 1, alpha: float | None = None):
    """A copy of ``model`` with SmoothQuant scales folded in (same float function).

    ``calibration``: model inputs (token-id windows, as for `quantize`), streamed through the
    calibration engine to get each smoothed tensor's ``max |x_j|``. ``strength`` in [0, 1]
    (SmoothQuant's alpha; default 0.5): 0 leaves activations as they are, 1 moves all their
    range into the weights; ``alpha`` is its deprecated name.
    ``inplace`` changes ``model`` itself instead of a `copy_model` copy; ``verbose`` shows
    the calibration's progress bar.

    Example:
        >>> smoothed = smooth(model, windows, strength=0.5)
        >>> np.allclose(smoothed(windows[:1]), model(windows[:1]), atol=1e-4)
        True
    """
    from tfcompress.core.calibration import calibrate, calibration_batches
    from tfcompress.core.deprecation import renamed_argument
    from tfcompress.core.validation import check_model

    strength = renamed_argument("alpha", alpha, "strength", strength)
    strength = check_strength(0.5 if strength is None else strength)
    check_model(model, "smooth")
    batches = calibration_batches(calibration, model)  # checked before any work
    if not smoothing_groups(model):  # before copying: a model with nothing to smooth fails fast
        raise TfcompressError(
            f"model {model.name!r} has no normalization whose output only feeds Dense/"
            "EinsumDense layers or self-attention in a functional graph (or in a KerasHub "
            f"decoder of {sorted(HUB_DECODERS)}), so there is nothing to smooth")
    target = model if inplace else copy_model(model)
    groups = smoothing_groups(target)
    paths = layer_paths(target)
    layers = [(paths[id(la)], la) for g in groups for la in g.layers]
    maxima = calibrate(target, layers, batches, ActivationMax(), sequential=False,
                       verbose=verbose)
    act_max = {id(g.norm): np.max([maxima[paths[id(la)]] for la in g.layers], axis=0)
               for g in groups}
    apply_smoothing(groups, act_max, strength)
    return target
