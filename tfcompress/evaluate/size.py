"""Parameter counts and real on-disk sizes (raw and gzip) of Keras models and files.

Example:
    >>> counts = param_counts(model)          # {"params": ..., "nonzero": ...}
    >>> sizes = keras_file_sizes(model)       # saves a real .keras file and measures it
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np


def param_counts(model) -> dict:
    """Total and non-zero scalars stored in the model's weights (trainable or not)."""
    total = nonzero = 0
    for w in model.weights:
        value = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
        total += value.size
        nonzero += int(np.count_nonzero(value))
    return {"params": int(total), "nonzero": int(nonzero)}


def file_sizes(path: str | Path) -> dict:
    """Bytes of a file as stored and after gzip (level 9), read from disk."""
    data = Path(path).read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0))}


def keras_file_sizes(model, path: str | Path | None = None) -> dict:
    """Save ``model`` as ``.keras`` (to ``path`` or a temporary file) and measure it.

    The optimizer's state is left out while saving: it is training state, not model size
    (AdamW would triple the file).
    """
    if path is None:
        with tempfile.TemporaryDirectory() as tmp:
            return keras_file_sizes(model, Path(tmp) / "model.keras")
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        model.optimizer = None
    try:
        model.save(path)
    finally:
        if optimizer is not None:
            model.optimizer = optimizer
    return file_sizes(path)


def bits_per_weight(size_bytes: int, n_params: int) -> float:
    """Effective storage bits per parameter."""
    return 8.0 * size_bytes / max(n_params, 1)
