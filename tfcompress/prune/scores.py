"""Importance scores of the weights of one ``(d_in, d_out)`` kernel matrix (pure NumPy).

Higher means more important; masks keep the highest scores.

Example:
    >>> w = np.array([[1.0, -2.0], [0.5, 4.0]])
    >>> wanda_scores(w, np.array([[1.0, 0.0], [1.0, 2.0]]))   # |W| * ||X_j||
    array([[1.41421356, 2.82842712],
           [1.        , 8.        ]])
"""

from __future__ import annotations

import numpy as np

from tfcompress.errors import TfcompressError


def magnitude_scores(weights: np.ndarray) -> np.ndarray:
    """``|W|``."""
    return np.abs(np.asarray(weights, dtype=np.float64))


def taylor_scores(weights: np.ndarray, grads) -> np.ndarray:
    """First-order Taylor importance ``sum_b |W * dL/dW_b|`` over a list of batch gradients.

    ``grads`` is one gradient array or a sequence of them (one per batch); accumulating the
    absolute value per batch keeps weights whose gradient changes sign across batches.
    """
    w = np.asarray(weights, dtype=np.float64)
    batches = [grads] if isinstance(grads, np.ndarray) else list(grads)
    if not batches:
        raise TfcompressError("grads is empty: give at least one batch gradient")
    total = np.zeros_like(w)
    for g in batches:
        if np.shape(g) != w.shape:
            raise TfcompressError(
                f"grads must have the kernel's shape {w.shape}, got {np.shape(g)}"
            )
        total += np.abs(w * np.asarray(g, dtype=np.float64))
    return total


def _rows(inputs: np.ndarray, d_in: int) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != d_in:
        raise TfcompressError(
            f"calibration inputs must be (rows, {d_in}) for this layer, got shape {x.shape}"
        )
    return x


def input_norms(inputs: np.ndarray, d_in: int) -> np.ndarray:
    """``||X_j||_2`` of each input feature over all calibration rows, checking the width."""
    x = _rows(inputs, d_in)
    return np.sqrt(np.einsum("ij,ij->j", x, x, dtype=np.float64))


def wanda_scores(weights: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Wanda importance ``|W_jk| * ||X_j||_2`` (Sun et al., 2023); ``inputs`` is (rows, d_in)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.abs(w) * input_norms(inputs, w.shape[0])[:, None]


def hessian(inputs: np.ndarray, d_in: int) -> np.ndarray:
    """The layer-wise Hessian ``2 X^T X / rows`` of the reconstruction loss ``||XW - XW'||^2``."""
    x = _rows(inputs, d_in)
    return (2.0 / max(len(x), 1)) * (x.T @ x).astype(np.float64)


