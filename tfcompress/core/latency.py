"""Latency and throughput with warm-up, repeats, median and spread, and `keras_forward`, the
compiled ids -> logits function evaluate, export and distill all run models with (here in core
so each imports it from below; `tfcompress.evaluate` re-exports it).

Example:
    >>> stats = time_callable(lambda: sum(range(1000)), warmup=2, repeats=5)
    >>> sorted(stats)
    ['max_ms', 'mean_ms', 'median_ms', 'min_ms', 'p10_ms', 'p90_ms', 'repeats']
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from tfcompress.errors import TfcompressError


def time_callable(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; milliseconds per call."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    t = np.asarray(times)
    return {
        "median_ms": float(np.median(t)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "max_ms": float(t.max()),
        "p10_ms": float(np.percentile(t, 10)),
        "p90_ms": float(np.percentile(t, 90)),
        "repeats": repeats,
    }


def interleaved_latency(
    fns: dict[str, Callable[[], object]], rounds: int = 5, repeats: int = 5, warmup: int = 2
) -> dict[str, dict]:
    """Median milliseconds of each callable, timed in alternating rounds.

    Interleaving spreads machine contention over all of them alike, so their ratios are
    fairer than timing one after another.

    Example:
        >>> t = interleaved_latency({"a": lambda: sum(range(100)), "b": lambda: None})
        >>> t["a"]["median_ms"] > 0
        True
    """
    if not fns:
        raise TfcompressError("fns is empty: give at least one callable to time")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_callable(fn, 0, repeats)["median_ms"])
    return {name: {"median_ms": float(np.median(v)), "p10_ms": float(np.percentile(v, 10)),
                   "p90_ms": float(np.percentile(v, 90)), "rounds": rounds}
            for name, v in samples.items()}


def keras_forward(model) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled inference function ``ids -> logits`` for a Keras (3 or tf.keras) model
    (auxiliary inputs such as ``padding_mask`` are filled, see `model_inputs`)."""
    import tensorflow as tf

    from tfcompress.core.layers import is_keras3_model
    from tfcompress.core.signature import model_inputs, signature

    if is_keras3_model(model):
        sig = signature(model)
        fn = tf.function(lambda x: model(model_inputs(model, x, sig), training=False),
                         reduce_retracing=True)
    else:
        fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: fn(tf.convert_to_tensor(x)).numpy()


def keras_latency(
    model, batch_size: int, seq_len: int, vocab_size: int, warmup: int = 3, repeats: int = 10
) -> dict:
    """Latency of one forward pass on random token ids, plus tokens per second."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab_size, (batch_size, seq_len)).astype(np.int32)
    forward = keras_forward(model)
    stats = time_callable(lambda: forward(x), warmup, repeats)
    stats["tokens_per_s"] = batch_size * seq_len / (stats["median_ms"] / 1e3)
    return stats
