"""Keep-masks (1 = keep, 0 = prune) from importance scores (pure NumPy).

Matrices are ``(d_in, d_out)``: inputs on rows, as `tfcompress.core.layers.kernel_matrix`.

Example:
    >>> unstructured_mask(np.array([[3.0, 1.0], [2.0, 4.0]]), 0.5)
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    >>> nm_mask(np.arange(8.0).reshape(4, 2), 2, 4)[:, 0]   # 2 kept per 4 inputs
    array([0., 0., 1., 1.], dtype=float32)
"""

from __future__ import annotations

import re

import numpy as np

from tfcompress.errors import TfcompressError


def check_sparsity(sparsity: float, arg: str = "sparsity") -> float:
    if not isinstance(sparsity, int | float) or not 0.0 <= float(sparsity) < 1.0:
        raise TfcompressError(f"{arg} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def parse_nm(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``: N weights kept in every group of M consecutive inputs."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise TfcompressError(f"an N:M pattern must look like '2:4', got {pattern!r}")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m:
        raise TfcompressError(f"N:M pattern needs 0 < N < M, got {n}:{m} in {pattern!r}")
    return n, m


def _keep_top(scores: np.ndarray, n_prune: int) -> np.ndarray:
    """Mask of a flat array keeping all but the ``n_prune`` lowest scores (stable on ties)."""
    mask = np.ones(scores.size, dtype=np.float32)
    mask[np.argsort(scores.ravel(), kind="stable")[:n_prune]] = 0.0
    return mask.reshape(scores.shape)


def unstructured_mask(scores: np.ndarray, sparsity: float, per_output: bool = False) -> np.ndarray:
    """Prune exactly ``round(sparsity * size)`` lowest scores of the layer.

    With ``per_output`` every output column loses the same fraction of its inputs (Wanda's
    comparison group).
    """
    sparsity = check_sparsity(sparsity)
    s = np.asarray(scores)
    if per_output:
        k = int(round(sparsity * s.shape[0]))
        return np.stack([_keep_top(s[:, j], k) for j in range(s.shape[1])], axis=1)
    return _keep_top(s, int(round(sparsity * s.size)))


def global_masks(scores: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """One threshold over all layers: exactly ``round(sparsity * total)`` weights pruned."""
    sparsity = check_sparsity(sparsity)
    if not scores:
        raise TfcompressError("scores is empty: give at least one layer's scores")
    names = list(scores)
    flat = np.concatenate([np.asarray(scores[n], dtype=np.float64).ravel() for n in names])
    keep = _keep_top(flat, int(round(sparsity * flat.size)))
    out, start = {}, 0
    for n in names:
        size = np.size(scores[n])
        out[n] = keep[start : start + size].reshape(np.shape(scores[n]))
        start += size
    return out


def nm_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the ``n`` highest of every ``m`` consecutive inputs (rows) of each output column."""
    if not 0 < n < m:
        raise TfcompressError(f"N:M pattern needs 0 < N < M, got {n}:{m}")
    s = np.asarray(scores)
    d_in, d_out = s.shape
    if d_in % m:
        raise TfcompressError(f"an {n}:{m} pattern needs d_in divisible by {m}, got d_in={d_in}")
    groups = s.reshape(d_in // m, m, d_out)
    order = np.argsort(groups, axis=1, kind="stable")
    mask = np.ones_like(groups, dtype=np.float32)
    np.put_along_axis(mask, order[:, : m - n, :], 0.0, axis=1)
    return mask.reshape(d_in, d_out)


def units_to_keep(importance: np.ndarray, sparsity: float, multiple: int = 1) -> np.ndarray:
    """Sorted indices of the units (neurons, heads) to keep: the most important ones.

    Removes ``round(sparsity * units)`` units, rounded down so the kept count is a multiple
    of ``multiple`` (at least one unit is always kept).
    """
    sparsity = check_sparsity(sparsity)
    imp = np.asarray(importance, dtype=np.float64).ravel()
    keep = imp.size - int(round(sparsity * imp.size))
    keep = max(multiple, keep - keep % multiple) if multiple > 1 else max(1, keep)
    keep = min(keep, imp.size)
    return np.sort(np.argsort(-imp, kind="stable")[:keep])


def mask_sparsity(mask: np.ndarray) -> float:
    """Fraction of zeros."""
    m = np.asarray(mask)
    return float(1.0 - np.count_nonzero(m) / max(m.size, 1))


def pattern_mask(
    scores: np.ndarray, sparsity: float, nm: tuple[int, int] | None = None,
    per_output: bool = False,
) -> np.ndarray:
    """`nm_mask` when an N:M pattern is given, else `unstructured_mask`."""
    return nm_mask(scores, *nm) if nm else unstructured_mask(scores, sparsity, per_output)
