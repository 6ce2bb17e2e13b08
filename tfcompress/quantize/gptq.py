"""GPTQ (Frantar et al. 2022) on NumPy arrays: quantize a layer's weights one input row at a
time and push each row's rounding error onto the rows not yet quantized, weighted by the
inverse Hessian of the layer's inputs, so the layer's *outputs* change as little as possible.

Follows the paper's reference algorithm (lazy block updates, Cholesky of the inverse
Hessian, damping relative to the mean diagonal, optional act-order with static groups);
inside a block each row takes the earlier rows' errors when it is reached
(`tfcompress.core.stats.error_feedback_blocks`: the same codes, 2-3x faster).

Example:
    >>> h = hessian(x)                  # tfcompress.core.hessian; x: (n, d_in) inputs
    >>> qt = gptq(w, h, Quantizer("affine", 4, "group", group_size=128))
    >>> np.linalg.norm(x @ (w - qt.dequantize()))       # below round-to-nearest's
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from tfcompress.core.compressor import Compressor
from tfcompress.core.layers import kernel_matrix, set_kernel_matrix
from tfcompress.core.stats import (
    as_stats,
    error_feedback_blocks,
    inverse_hessian_factor,
    permute_symmetric,
)
from tfcompress.errors import TfcompressError
from tfcompress.quantize.quantizers import QTensor, Quantizer


def gptq(
    w: np.ndarray,
    h: np.ndarray,
    quantizer: Quantizer,
    damping: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
    layer: str = "",
    overwrite_h: bool = False,
) -> QTensor:
    """GPTQ-quantize ``w`` (d_in, d_out) given the input Hessian ``h`` (d_in, d_in).

    ``damping`` adds that fraction of the mean Hessian diagonal to it (stability);
    ``act_order`` quantizes the inputs with the largest Hessian diagonal first. Without
    act-order, group parameters are fitted when their group is reached (on the already
    error-corrected weights); with act-order they are fitted once up front ("static groups"),
    so groups stay contiguous in the stored layout. ``layer`` names the layer in errors;
    ``overwrite_h=True`` lets ``h`` be worked in (its values are lost): no copy of it.
    """
    if not 0 <= damping <= 1:
        raise TfcompressError(f"damping must be in [0, 1], got {damping}")
    w = np.array(w, np.float64)
    d_in = w.shape[0]
    if h.shape != (d_in, d_in):
        raise TfcompressError(f"h must be ({d_in}, {d_in}) for w of shape {w.shape}, got {h.shape}")
    g = quantizer.group_rows(d_in)
    h = np.asarray(h, np.float64)
    w[np.diag(h) == 0] = 0.0
    static = g == d_in or act_order or quantizer.scheme == "kmeans"
    params = [quantizer.fit(w[i : i + g]) for i in range(0, d_in, g)] if static else []
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(d_in)
    w = w[perm]
    # the factor is computed in the one d_in x d_in array held (512 MB at d_in 8192): h
    # itself when the caller lets it go (overwrite_h), else a copy; handed over without a
    # reference left here, so it is freed as the factor replaces it
    held = [h if overwrite_h and h.flags.c_contiguous else np.array(h)]
    del h
    if act_order:
        permute_symmetric(held[0], perm)
    hinv, _ = inverse_hessian_factor(held.pop(), damping, layer, overwrite=True)
    # block size a multiple of the group so a group never starts half-updated
    block = max(block_size // g, 1) * g if g < d_in else block_size
    codes = np.zeros(w.shape, np.int32)
    for i1, rows in error_feedback_blocks(w, hinv, block):
        for i in range(len(rows.w)):
            row = perm[i1 + i]
            if not static and row % g == 0:  # a group is fitted on its corrected rows
                rows.settle_up_to(i)
                params.append(quantizer.fit(rows.w[i : i + g]))
            p = params[row // g]
            current = rows.row(i)
            code = quantizer.encode(current[None], *p)
            codes[i1 + i] = code[0]
            rows.err[i] = (current - _decode_row(code[0], p)) / rows.owed[i, i]
    out = np.empty_like(codes)
    out[perm] = codes
    return quantizer.pack_params(out, params, g)


def _decode_row(code: np.ndarray, params) -> np.ndarray:
    scale, offset, levels = params
    if levels.shape[0] == 1:
        values = levels[0][code]
    else:
        values = levels[np.arange(len(code)), code]
    values = values * scale[0]
    return values if offset is None else values + offset[0]


def output_error(x, w: np.ndarray, w_hat: np.ndarray) -> float:
    """Mean squared change of the layer's outputs ``x @ w`` when ``w`` becomes ``w_hat``;
    ``x`` is ``(n, d_in)`` rows or their `InputStats` (``tr(D^T X^T X D) / (n d_out)``)."""
    stats = as_stats(x, needs=("xtx",))
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.sum(d * (stats.xtx @ d))) / (max(stats.n, 1) * d.shape[1])


class GPTQCompressor(Compressor):
    """GPTQ as a `Compressor`: each layer quantized from its input Hessian by ``config``'s
    quantizer for its path (a `GPTQConfig`), ``damping`` and ``act_order``; its kernel set to
    the dequantized codes (later blocks see this error); the result is the `QTensor`.

    Example:
        >>> codes = calibrate(model, layers, ids, GPTQCompressor(GPTQConfig(bits=4)))
    """

    needs = ("xtx",)

    def __init__(self, config):
        self.config = config

    def compress_layer(self, path: str, layer, stats) -> QTensor:
        c = self.config
        qt = gptq(kernel_matrix(layer), stats.take_hessian(), c.quantizer(path), c.damping,
                  c.act_order, layer=path, overwrite_h=True)
        set_kernel_matrix(layer, qt.dequantize())
        return qt

    def save(self, result: QTensor) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(result, f.name)) for f in fields(result)
                if getattr(result, f.name) is not None}

    def load(self, arrays: dict[str, np.ndarray]) -> QTensor:
        return QTensor(codes=arrays["codes"], scale=arrays["scale"],
                       offset=arrays.get("offset"), levels=arrays["levels"],
                       bits=int(arrays["bits"]), group_rows=int(arrays["group_rows"]))
