"""Parameter counts and real on-disk sizes (raw and gzip) of Keras models and files.

Example:
    >>> counts = param_counts(model)          # {"params": ..., "nonzero": ...}
    >>> sizes = keras_file_sizes(model)       # saves a real .keras file and measures it
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tfcompress.core.files import file_sizes


def param_counts(model) -> dict:
    """Parameters of the model (trainable or not) and how many are non-zero. A layer holding
    `tfcompress.quantize` codes counts the weight they stand for, not its packed codes,
    scales and offsets, so quantizing leaves the count unchanged (the bytes show the gain).

    Example:
        >>> param_counts(quantize(model, bits=4)) == param_counts(model)
        True
    """
    from tfcompress.core.layers import iter_layers
    from tfcompress.quantize.storage import is_quantized

    total = nonzero = 0
    storage = set()
    for _, layer in iter_layers(model):
        if is_quantized(layer) and layer.built:
            storage |= {id(v) for v in (layer.tfc_codes, layer.tfc_scale, layer.tfc_levels,
                                        layer.tfc_offset) if v is not None}
            weight = np.asarray(layer._tfc_decode())
            total += weight.size
            nonzero += int(np.count_nonzero(weight))
    for w in model.weights:
        if id(w) in storage:
            continue
        value = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
        total += value.size
        nonzero += int(np.count_nonzero(value))
    return {"params": int(total), "nonzero": int(nonzero)}


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
