"""GPTQ (Frantar et al. 2022) on NumPy arrays: quantize a layer's weights one input row at a
time and push each row's rounding error onto the rows not yet quantized, weighted by the
inverse Hessian of the layer's inputs, so the layer's *outputs* change as little as possible.

Follows the paper's reference algorithm (lazy block updates, Cholesky of the inverse
Hessian, damping relative to the mean diagonal, optional act-order with static groups).

Example:
    >>> h = hessian(x)                                  # x: (n, d_in) captured inputs
    >>> qt = gptq(w, h, Quantizer("affine", 4, "group", group_size=128))
    >>> np.linalg.norm(x @ (w - qt.dequantize()))       # below round-to-nearest's
"""

from __future__ import annotations

import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.quantize.quantizers import QTensor, Quantizer


def hessian(x: np.ndarray) -> np.ndarray:
    """``2 X^T X / n`` of inputs ``x`` (n, d_in): the Hessian of ``||X W - X W_q||^2 / n``."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or not len(x):
        raise TfcompressError(f"inputs must be a non-empty (n, d_in) array, got {x.shape}")
    return 2.0 * x.T @ x / len(x)


def gptq(
    w: np.ndarray,
    h: np.ndarray,
    quantizer: Quantizer,
    damping: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
) -> QTensor:
    """GPTQ-quantize ``w`` (d_in, d_out) given the input Hessian ``h`` (d_in, d_in).

    ``damping`` adds that fraction of the mean Hessian diagonal to it (stability);
    ``act_order`` quantizes the inputs with the largest Hessian diagonal first. Without
    act-order, group parameters are fitted when their group is reached (on the already
    error-corrected weights); with act-order they are fitted once up front ("static groups"),
    so groups stay contiguous in the stored layout.
    """
    if not 0 <= damping <= 1:
        raise TfcompressError(f"damping must be in [0, 1], got {damping}")
    w = np.array(w, np.float64)
    d_in = w.shape[0]
    if h.shape != (d_in, d_in):
        raise TfcompressError(f"h must be ({d_in}, {d_in}) for w of shape {w.shape}, got {h.shape}")
    g = quantizer.group_rows(d_in)
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    static = g == d_in or act_order or quantizer.scheme == "kmeans"
    params = [quantizer.fit(w[i : i + g]) for i in range(0, d_in, g)] if static else []
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(d_in)
    w, h = w[perm], h[perm][:, perm]
    h[np.diag_indices(d_in)] += damping * np.mean(np.diag(h))
    hinv = _upper_cholesky_of_inverse(h)
    # block size a multiple of the group so a group never starts half-updated
    block = max(block_size // g, 1) * g if g < d_in else block_size
    codes = np.zeros(w.shape, np.int32)
    for i1 in range(0, d_in, block):
        i2 = min(i1 + block, d_in)
        w1, err1, hinv1 = w[i1:i2].copy(), np.zeros_like(w[i1:i2]), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = perm[i1 + i]
            if not static and row % g == 0:
                params.append(quantizer.fit(w1[i : i + g]))
            p = params[row // g]
            code = quantizer.encode(w1[i : i + 1], *p)
            codes[i1 + i] = code[0]
            q = _decode_row(code[0], p)
            err = (w1[i] - q) / hinv1[i, i]
            w1[i:] -= np.outer(hinv1[i, i:], err)
            err1[i] = err
        w[i2:] -= hinv[i1:i2, i2:].T @ err1
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


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of ``h^-1``, adding more damping if ``h`` is not positive."""
    eye = np.eye(len(h))
    extra = 0.0
    for _ in range(8):
        try:
            inv = np.linalg.inv(np.linalg.cholesky(h + extra * eye))
            return np.linalg.cholesky(inv.T @ inv).T
        except np.linalg.LinAlgError:
            extra = max(extra * 10, 1e-6 * float(np.mean(np.diag(h))) + 1e-12)
    raise TfcompressError("the input Hessian is not positive definite even after damping")


def output_error(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    """Mean squared change of the layer's outputs ``x @ w`` when ``w`` becomes ``w_hat``."""
    return float(np.mean((np.asarray(x, np.float64) @ (w - w_hat)) ** 2))
