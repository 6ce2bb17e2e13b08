"""Offline teacher: its top-k logits computed once, saved with ``tf.data``, read back as batches.

Distilling from the cache never runs the teacher, so a large teacher costs one forward pass
over the data instead of one per student step (and per student, and per epoch).

Several workers can share the work: each caches its shard (``shard=worker_shard()``) into
the same folder, and `load_teacher_cache` reads the shards back as one cache.

Example:
    >>> cache_teacher(teacher, corpus.dataset("train", 128, 32).take(300), "cache/t", top_k=32)
    >>> train = load_teacher_cache("cache/t", batch_size=32, repeat=True)
    >>> Distiller(None, student).fit(train, steps_per_epoch=300)
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfcompress.core.layers import require_keras3
from tfcompress.core.progress import progress_bar
from tfcompress.core.validation import check_output_path, reading
from tfcompress.distill.distiller import vocab_size_of
from tfcompress.distill.soft_targets import pack_targets
from tfcompress.errors import TfcompressError

SHARD_NAME = re.compile(r"shard-(\d{5})-of-(\d{5})")


def shard_name(index: int, count: int) -> str:
    """Folder of shard ``index`` of ``count`` inside a cache: ``shard-00001-of-00002``."""
    return f"shard-{index:05d}-of-{count:05d}"


def shard_rows(offset: int, rows: int, index: int, count: int) -> np.ndarray:
    """Rows of a batch of ``rows`` windows, the first being window ``offset`` of the dataset,
    that belong to shard ``index`` of ``count`` (windows ``index``, ``index + count``, ...).

    Example:
        >>> shard_rows(offset=4, rows=4, index=1, count=3)    # windows 4..7: 4 and 7
        array([0, 3])
    """
    return np.arange((index - offset) % count, rows, count)


def check_shard(shard) -> tuple[int, int] | None:
    if shard is None:
        return None
    if (not isinstance(shard, tuple | list) or len(shard) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
            or not 0 <= shard[0] < shard[1]):
        raise TfcompressError(f"shard must be (index, count) with 0 <= index < count, e.g. "
                              f"tfcompress.core.distribute.worker_shard(); got {shard!r}")
    return int(shard[0]), int(shard[1])


def _save_atomic(dataset, target: Path) -> None:
    """``dataset.save`` into a temporary sibling folder, then renamed over ``target``: a
    reader never sees a half-written cache, and a failed write leaves the old one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    dataset.save(str(temporary))
    if target.exists():
        stale = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(stale)
        temporary.rename(target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        temporary.rename(target)


def cache_teacher(teacher, dataset, path: str | Path, top_k: int = 32,
                  verbose: int = 1, shard: tuple[int, int] | None = None) -> Path:
    """Run ``teacher`` over a finite dataset of ``(x, y, mask)`` batches and save top-k logits.

    Each saved element is one window: ``(x, y, mask, top_values, top_indices)`` with
    ``top_values`` float32 and ``top_indices`` int32 of shape ``(seq, top_k)``. ``top_k`` equal
    to the vocabulary size stores the full logits (exact soft loss, any divergence).

    ``shard=(index, count)`` (``worker_shard()`` on each worker of a multi-worker job): the
    teacher runs on windows ``index, index + count, ...`` of ``dataset`` only, saved in their
    own folder ``path/shard-<index>-of-<count>``, so workers writing to one ``path`` never
    touch each other's files; `load_teacher_cache` reads all shards back as one cache in
    ``dataset``'s order. Every worker reads the whole dataset (cheap next to the teacher).

    Example:
        >>> cache_teacher(teacher, batches, "cache/t", shard=worker_shard())  # on each worker
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
    shard = check_shard(shard)
    check_output_path(path, "path", folder=True)
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise TfcompressError("dataset is infinite (repeat()): cache a finite one, e.g. "
                              "dataset.take(n_batches)")
    # a shard's batches shrink to its rows: one trace for every batch size
    forward = tf.function(lambda x: tf.math.top_k(teacher(x, training=False), k=top_k),
                          reduce_retracing=True)
    total = int(dataset.cardinality()) if dataset.cardinality() > 0 else None
    bar = progress_bar(total, unit_name="batch") if verbose else None
    parts, seen = [], 0
    for i, batch in enumerate(dataset):
        rows = int(tf.shape(batch[0])[0])
        if shard is not None:
            keep = shard_rows(seen, rows, *shard)
            batch = tuple(tf.gather(column, keep) for column in batch)
        seen += rows
        if int(tf.shape(batch[0])[0]):
            top = forward(batch[0])
            parts.append((*batch, top.values, tf.cast(top.indices, tf.int32)))
        if bar is not None:
            bar.update(i + 1)
    if not parts:
        raise TfcompressError("dataset is empty: nothing to cache" if not seen else
                              f"shard {shard[0]} of {shard[1]} holds no window: the dataset has "
                              f"only {seen}")
    columns = [tf.concat(col, axis=0) for col in zip(*parts, strict=True)]
    path = Path(path)
    target = path if shard is None else path / shard_name(*shard)
    _save_atomic(tf.data.Dataset.from_tensor_slices(tuple(columns)), target)
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
    folders = _cache_folders(path)
    parts = []
    for folder in folders:
        with reading(folder, "a teacher cache (a folder written by cache_teacher)"):
            part = tf.data.Dataset.load(str(folder))
        if not isinstance(part.element_spec, tuple) or len(part.element_spec) != 5:
            raise TfcompressError(f"path {str(folder)!r} is a tf.data snapshot but not a "
                                  f"teacher cache: its elements are {part.element_spec}, not "
                                  "(x, y, mask, top_values, top_indices)")
        parts.append(part)
    windows = sum(int(part.cardinality()) for part in parts)
    ds = parts[0]
    if len(parts) > 1:  # round robin over the shards: window k is in shard k % count
        ds = tf.data.Dataset.choose_from_datasets(
            parts, tf.data.Dataset.range(len(parts)).repeat(), stop_on_empty_dataset=False)
        ds = ds.apply(tf.data.experimental.assert_cardinality(windows))
    if shuffle:
        ds = ds.shuffle(windows, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def arrange(x, y, mask, values, indices):
        if packed:
            return x, pack_targets(y, values, indices), mask
        return (x, (values, indices)), y, mask

    return ds.batch(batch_size).map(arrange).prefetch(tf.data.AUTOTUNE)


def _cache_folders(path: Path) -> list[Path]:
    """The cache itself, or its shards in order (every one of them present)."""
    shards = {}
    for child in path.iterdir():
        found = SHARD_NAME.fullmatch(child.name)
        if found and child.is_dir():
            shards[int(found.group(1)), int(found.group(2))] = child
    if not shards:
        return [path]
    counts = sorted({count for _, count in shards})
    if len(counts) > 1:
        raise TfcompressError(f"path {str(path)!r} holds shards of {counts} workers: remove the "
                              "stale ones (each cache_teacher run writes shard-i-of-count)")
    count = counts[0]
    missing = [i for i in range(count) if (i, count) not in shards]
    if missing:
        raise TfcompressError(f"path {str(path)!r} holds {count - len(missing)} of {count} "
                              f"shards, missing {missing}: every worker must finish "
                              f"cache_teacher(..., shard=(i, {count})) first")
    return [shards[i, count] for i in range(count)]
