"""Offline teacher: its top-k logits computed once, saved with ``tf.data``, read back as batches.

Distilling from the cache never runs the teacher, so a large teacher costs one forward pass
over the data instead of one per student step (and per student, and per epoch).

Example:
    >>> cache_teacher(teacher, corpus.dataset("train", 128, 32).take(300), "cache/t", top_k=32)
    >>> train = load_teacher_cache("cache/t", batch_size=32, repeat=True)
    >>> Distiller(None, student).fit(train, steps_per_epoch=300)
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from tfcompress.core.layers import require_keras3
from tfcompress.core.progress import progress_bar
from tfcompress.core.validation import check_output_path, reading
from tfcompress.distill.distiller import vocab_size_of
from tfcompress.distill.soft_targets import pack_targets
from tfcompress.errors import TfcompressError


def cache_teacher(teacher, dataset, path: str | Path, top_k: int = 32,
                  verbose: bool = True) -> Path:
    """Run ``teacher`` over a finite dataset of ``(x, y, mask)`` batches and save top-k logits.

    Each saved element is one window: ``(x, y, mask, top_values, top_indices)`` with
    ``top_values`` float32 and ``top_indices`` int32 of shape ``(seq, top_k)``. ``top_k`` equal
    to the vocabulary size stores the full logits (exact soft loss, any divergence).
    """
    require_keras3(teacher, "teacher")
    vocab = vocab_size_of(teacher, "teacher")
    if not isinstance(top_k, int) or not 1 <= top_k <= vocab:
        raise TfcompressError(f"top_k must be an integer in [1, {vocab}] (the teacher's "
                              f"vocabulary), got {top_k!r}")
    if not isinstance(dataset, tf.data.Dataset):
        raise TfcompressError(f"dataset must be a tf.data.Dataset of (x, y, mask) batches, got "
                              f"{type(dataset).__name__}")
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 3:
        raise TfcompressError(
            "dataset must yield (x, y, mask) batches (as corpus.dataset(...) does), got "
            f"elements {spec}; add a mask, e.g. dataset.map(lambda x, y: (x, y, tf.ones_like(y)))"
        )
    check_output_path(path, "path", folder=True)
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise TfcompressError("dataset is infinite (repeat()): cache a finite one, e.g. "
                              "dataset.take(n_batches)")
    forward = tf.function(lambda x: tf.math.top_k(teacher(x, training=False), k=top_k))
    total = int(dataset.cardinality()) if dataset.cardinality() > 0 else None
    bar = progress_bar(total, unit_name="batch") if verbose else None
    parts = []
    for i, (x, y, mask) in enumerate(dataset):
        top = forward(x)
        parts.append((x, y, mask, top.values, tf.cast(top.indices, tf.int32)))
        if bar is not None:
            bar.update(i + 1)
    if not parts:
        raise TfcompressError("dataset is empty: nothing to cache")
    columns = [tf.concat(col, axis=0) for col in zip(*parts, strict=True)]
    path = Path(path)
    tf.data.Dataset.from_tensor_slices(tuple(columns)).save(str(path))
    return path


def load_teacher_cache(path: str | Path, batch_size: int, shuffle: bool = False,
                       repeat: bool = False, seed: int = 0, packed: bool = False):
    """Batches from `cache_teacher`'s files, for a `Distiller` or for a plain ``fit``.

    Default: ``((x, (top_values, top_indices)), y, mask)`` (`Distiller` with or without a
    teacher). ``packed=True``: ``(x, packed_targets, mask)`` for `SoftTargetLoss(top_k=k)`.
    """
    path = Path(path)
    if not path.is_dir():
        raise TfcompressError(f"path {str(path)!r} is not a teacher cache (a folder written by "
                              "cache_teacher)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TfcompressError(f"batch_size must be a positive integer, got {batch_size!r}")
    with reading(path, "a teacher cache (a folder written by cache_teacher)"):
        ds = tf.data.Dataset.load(str(path))
    if not isinstance(ds.element_spec, tuple) or len(ds.element_spec) != 5:
        raise TfcompressError(f"path {str(path)!r} is a tf.data snapshot but not a teacher "
                              f"cache: its elements are {ds.element_spec}, not (x, y, mask, "
                              "top_values, top_indices)")
    if shuffle:
        ds = ds.shuffle(int(ds.cardinality()), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def arrange(x, y, mask, values, indices):
        if packed:
            return x, pack_targets(y, values, indices), mask
        return (x, (values, indices)), y, mask

    return ds.batch(batch_size).map(arrange).prefetch(tf.data.AUTOTUNE)
