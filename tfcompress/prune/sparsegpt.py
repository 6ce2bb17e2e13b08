"""SparseGPT (Frantar & Alistarh, 2023): prune a layer and fix the rest of its weights.

Pure NumPy. Columns of the input dimension are processed left to right in blocks; each
pruned weight's error is spread onto the not-yet-processed weights through the inverse
Hessian's Cholesky factor, so the layer output ``X @ W`` changes as little as possible.

Example:
    >>> from tfcompress.core.stats import hessian
    >>> x = np.random.default_rng(0).normal(size=(256, 16))
    >>> w = np.random.default_rng(1).normal(size=(16, 8))
    >>> new_w, mask = sparsegpt_prune(w, hessian(x), sparsity=0.5)
    >>> float((new_w == 0).mean())
    0.5
"""

from __future__ import annotations

import numpy as np

from tfcompress.core.stats import error_feedback_blocks, inverse_hessian_factor
from tfcompress.errors import TfcompressError
from tfcompress.prune.masks import check_sparsity


def sparsegpt_prune(
    weights: np.ndarray,
    h: np.ndarray,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damping: float = 0.01,
    layer: str = "",
    overwrite_h: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Prune a ``(d_in, d_out)`` matrix with Hessian ``h`` (d_in, d_in) of its inputs.

    Unstructured: each block of ``block_size`` inputs loses ``sparsity`` of its weights,
    chosen by the OBS saliency ``w^2 / [H^-1]_jj^2`` on the already-updated weights. With
    ``nm=(n, m)`` every ``m`` consecutive inputs keep ``n`` weights per output
    (``sparsity`` is then ignored). Returns ``(new_weights, keep_mask)``; ``layer`` names
    the layer in errors; ``overwrite_h=True`` lets ``h`` be worked in (its values are lost):
    no copy of it.
    """
    check_sparsity(sparsity)
    w = np.array(weights, dtype=np.float64)  # (d_in, d_out): a row per input, contiguous
    d_in, d_out = w.shape
    if np.shape(h) != (d_in, d_in):
        raise TfcompressError(f"h must be ({d_in}, {d_in}) for this layer, got {np.shape(h)}")
    if block_size < 1:
        raise TfcompressError(f"block_size must be a positive integer, got {block_size}")
    if damping <= 0:
        raise TfcompressError(f"damping must be > 0, got {damping}")
    if nm is not None:
        n, m = nm
        if not 0 < n < m or d_in % m or block_size % m:
            raise TfcompressError(
                f"nm={nm} needs 0 < N < M, d_in ({d_in}) and block_size ({block_size}) "
                "divisible by M"
            )
    # h handed over (no reference left here): the factor is made in it (overwrite_h) or in
    # its copy, the one d_in x d_in array held (512 MB at d_in 8192)
    held = [h]
    del h
    hinv, dead = inverse_hessian_factor(held.pop(), damping, layer, overwrite=overwrite_h)
    w[dead] = 0.0
    keep = np.ones(w.shape, bool)  # a byte a weight: 17 MB at 8192 x 2048, not 134
    for i1, rows in error_feedback_blocks(w, hinv, block_size):
        keep1 = keep[i1 : i1 + len(rows.w)]
        diag = np.diag(rows.owed)[:, None]
        if nm is None:
            saliency = ((rows.w / diag) ** 2).ravel()
            n_prune = int(round(sparsity * saliency.size))
            if n_prune:
                keep1.ravel()[np.argpartition(saliency, n_prune - 1)[:n_prune]] = False
        for i in range(len(rows.w)):
            if nm is not None and i % nm[1] == 0:  # N:M chooses on the corrected rows
                rows.settle_up_to(i)
                group = (rows.w[i : i + nm[1]] / diag[i : i + nm[1]]) ** 2
                lowest = np.argsort(group, axis=0, kind="stable")[: nm[1] - nm[0]]
                np.put_along_axis(keep1[i : i + nm[1]], lowest, False, axis=0)
            current = rows.row(i)
            rows.w[i] = np.where(keep1[i], current, 0.0)
            rows.err[i] = (current - rows.w[i]) / diag[i]
    # pruned weights were zeroed row by row: no masked float64 copy at the end
    return w.astype(np.float32), keep.astype(np.float32)
