"""Token ids -> next-token windows ``(inputs, targets, mask)`` as numpy arrays or tf.data.

The mask is 1 for real target positions and 0 for padding; Keras's ``fit``/``evaluate`` read it
as ``sample_weight``, so padded positions count for nothing in losses and metrics.

Example:
    >>> x, y, m = make_windows(np.arange(10), seq_len=4)
    >>> x[0].tolist(), y[0].tolist()
    ([0, 1, 2, 3], [1, 2, 3, 4])
"""

from __future__ import annotations

import numpy as np

from tfcompress.errors import TfcompressError


def make_windows(
    ids: np.ndarray, seq_len: int, stride: int | None = None, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``ids`` into windows of ``seq_len`` inputs and the targets shifted by one.

    Windows start every ``stride`` tokens (default ``seq_len``: no target is scored twice). The
    last window is padded with ``pad_id`` and masked so no token is dropped.
    """
    ids = np.asarray(ids, dtype=np.int32).reshape(-1)
    if seq_len < 1:
        raise TfcompressError(f"seq_len must be a positive integer, got {seq_len}")
    stride = seq_len if stride is None else stride
    if stride < 1:
        raise TfcompressError(f"stride must be a positive integer, got {stride}")
    if ids.size < seq_len + 1:
        raise TfcompressError(
            f"seq_len={seq_len} is longer than the corpus ({ids.size} tokens): a window needs "
            f"seq_len + 1 tokens; use seq_len <= {max(ids.size - 1, 0)}"
        )
    n_targets = ids.size - 1
    starts = np.arange(0, n_targets, stride)
    starts = starts[(starts + seq_len <= n_targets) | (starts == starts[-1])]
    padded = np.full(starts[-1] + seq_len + 1, pad_id, dtype=np.int32)
    padded[: ids.size] = ids
    index = starts[:, None] + np.arange(seq_len)[None, :]
    mask = (index + 1 < ids.size).astype(np.float32)
    return padded[index], padded[index + 1], mask


def lm_dataset(
    ids: np.ndarray,
    seq_len: int,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    stride: int | None = None,
    repeat: bool = False,
    pad_id: int = 0,
):
    """A batched ``tf.data.Dataset`` of ``(inputs, targets, mask)`` for next-token training.

    Example:
        >>> ds = lm_dataset(np.arange(1000) % 256, seq_len=32, batch_size=4)
        >>> [t.shape.as_list() for t in next(iter(ds))]
        [[4, 32], [4, 32], [4, 32]]
    """
    import tensorflow as tf

    if batch_size < 1:
        raise TfcompressError(f"batch_size must be a positive integer, got {batch_size}")
    x, y, m = make_windows(ids, seq_len, stride=stride, pad_id=pad_id)
    ds = tf.data.Dataset.from_tensor_slices((x, y, m))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
