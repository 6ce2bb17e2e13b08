"""Representative (calibration) inputs for quantized export, validated before any work.

Accepts a numpy array (or nested list) of samples, or a ``tf.data.Dataset`` of samples or of
``(inputs, targets[, mask])`` tuples, batched or not. Returns single-example arrays ready for
the converter.

Example:
    >>> spec = InputSpec(shape=(1, 4), dtype="int32", vocab_size=10)
    >>> [a.shape for a in representative_samples(np.zeros((3, 4), int), spec)]
    [(1, 4), (1, 4), (1, 4)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfcompress.errors import TfcompressError

# The name of an exported file's main input, whatever the model calls it.
MAIN_NAME = "token_ids"


@dataclass(frozen=True)
class InputSpec:
    """The exported input: ``shape`` with the batch first, dtype name, token vocabulary, and
    the auxiliary inputs exposed beside it (``(name, dtype)``, each ``(batch, seq_len)``)."""

    shape: tuple[int | None, ...]
    dtype: str
    vocab_size: int | None = None
    auxiliary: tuple[tuple[str, str], ...] = ()

    def named(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The exported model's inputs by name for main input ``x``: auxiliary masks ones."""
        return {MAIN_NAME: x, **{name: np.ones(x.shape[:2], dtype)
                                 for name, dtype in self.auxiliary}}

    @property
    def is_integer(self) -> bool:
        return np.issubdtype(np.dtype(self.dtype), np.integer)

    def describe(self) -> str:
        kind = f"integer token ids in [0, {self.vocab_size})" if self.is_integer else "floats"
        return f"{kind} of shape (n, {', '.join(str(d) for d in self.shape[1:])})"


def _check_row_shape(shape: tuple, spec: InputSpec, what: str) -> None:
    want = tuple(spec.shape[1:])
    ok = len(shape) in (len(want), len(want) + 1) and all(
        w is None or s is None or s == w for s, w in zip(shape[-len(want):], want, strict=True)
    )
    if not ok:
        raise TfcompressError(
            f"calibration {what} has shape {shape}; the model needs {spec.describe()}"
        )


def _check_dtype(dtype, spec: InputSpec, what: str) -> None:
    dtype = np.dtype(dtype)
    if spec.is_integer and not np.issubdtype(dtype, np.integer):
        raise TfcompressError(
            f"calibration {what} has dtype {dtype}; the model needs {spec.describe()}"
        )
    if not spec.is_integer and not (np.issubdtype(dtype, np.floating)
                                     or np.issubdtype(dtype, np.integer)):
        raise TfcompressError(
            f"calibration {what} has dtype {dtype}; the model needs {spec.describe()}"
        )


def _rows(array: np.ndarray, spec: InputSpec, what: str) -> list[np.ndarray]:
    _check_row_shape(array.shape, spec, what)
    _check_dtype(array.dtype, spec, what)
    if array.ndim == len(spec.shape) - 1:
        array = array[None]
    return [array[i : i + 1] for i in range(len(array))]


def representative_samples(data, spec: InputSpec, max_samples: int = 100) -> list[np.ndarray]:
    """Up to ``max_samples`` single-example arrays ``(1, ...)`` of ``spec.dtype`` from ``data``.

    Raises `TfcompressError` for an empty set, a wrong shape or dtype, or token ids outside
    ``[0, vocab_size)``; a dataset's ``element_spec`` is checked before it is iterated.
    """
    import tensorflow as tf

    if max_samples < 1:
        raise TfcompressError(f"max_samples must be >= 1, got {max_samples}")
    rows: list[np.ndarray] = []
    if isinstance(data, tf.data.Dataset):
        element = data.element_spec
        element = element[0] if isinstance(element, tuple) else element
        if not isinstance(element, tf.TensorSpec):
            raise TfcompressError(
                f"calibration must yield tensors or (inputs, ...) tuples, got {element}"
            )
        _check_row_shape(tuple(element.shape), spec, "dataset elements")
        _check_dtype(element.dtype.as_numpy_dtype, spec, "dataset elements")
        for item in data:
            x = item[0] if isinstance(item, tuple) else item
            rows.extend(_rows(np.asarray(x), spec, "element"))
            if len(rows) >= max_samples:
                break
    elif data is not None:
        try:
            array = np.asarray(data)
        except ValueError as err:
            raise TfcompressError(
                f"calibration must be an array of samples: {err}"
            ) from None
        if array.size == 0:
            raise TfcompressError("calibration is empty: give at least one sample")
        rows = _rows(array, spec, "array")
    if not rows:
        raise TfcompressError("calibration is empty: give at least one sample")
    rows = rows[:max_samples]
    if spec.is_integer and spec.vocab_size:
        low = min(int(r.min()) for r in rows)
        high = max(int(r.max()) for r in rows)
        if low < 0 or high >= spec.vocab_size:
            raise TfcompressError(
                f"calibration holds token ids in [{low}, {high}]; the model needs "
                f"{spec.describe()}"
            )
    return [np.asarray(r, dtype=spec.dtype) for r in rows]
