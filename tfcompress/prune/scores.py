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

from tfcompress.core.stats import as_stats
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


def input_norms(inputs, d_in: int) -> np.ndarray:
    """``||X_j||_2`` of each input feature: ``inputs`` is ``(rows, d_in)`` or `InputStats`."""
    return as_stats(inputs, d_in, needs=("sq",)).norms()


def wanda_scores(weights: np.ndarray, inputs) -> np.ndarray:
    """Wanda importance ``|W_jk| * ||X_j||_2`` (Sun et al., 2023); ``inputs`` is (rows, d_in)
    or the layer's streamed `InputStats`."""
    w = np.asarray(weights, dtype=np.float64)
    return np.abs(w) * input_norms(inputs, w.shape[0])[:, None]
