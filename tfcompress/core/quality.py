"""Language-model and classifier quality from predictions: perplexity, next-token accuracy.

The math is in `token_stats`, a pure numpy function; `lm_quality` feeds it batches from any
prediction function (a Keras model, a TFLite interpreter, ...). It sits in core because
evaluate, export's verification and distill's checkpoints all score with it
(`tfcompress.evaluate` re-exports it).

Example:
    >>> logits = np.zeros((1, 3, 5)); targets = np.array([[1, 2, 3]])
    >>> round(lm_quality(lambda x: logits, [(targets, targets, np.ones((1, 3)))])["perplexity"], 6)
    5.0
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tfcompress.errors import TfcompressError


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_stats(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None):
    """Sum of negative log-likelihood, correct top-1 predictions and counted tokens.

    Positions where ``mask`` is 0 count for nothing.
    """
    targets = np.asarray(targets)
    if logits.shape[:-1] != targets.shape:
        raise TfcompressError(
            f"logits shape {logits.shape} does not match targets shape {targets.shape}"
        )
    mask = np.ones(targets.shape) if mask is None else np.asarray(mask, dtype=np.float64)
    logp = log_softmax(logits)
    nll = -np.take_along_axis(logp, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    hits = (np.argmax(logits, axis=-1) == targets).astype(np.float64)
    return float((nll * mask).sum()), float((hits * mask).sum()), float(mask.sum())


def iter_batches(data, max_batches: int | None = None):
    """Numpy ``(inputs, targets, mask)`` batches from a tf.data dataset or a list of tuples.

    A single tuple of arrays ``(x, y[, mask])`` is one batch.
    """
    if isinstance(data, tuple) and len(data) in (2, 3) and hasattr(data[0], "shape"):
        data = [data]
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            return
        batch = tuple(np.asarray(t) for t in batch)
        if len(batch) == 2:
            batch = (*batch, np.ones(batch[1].shape, dtype=np.float32))
        yield batch


def lm_quality(
    predict: Callable[[np.ndarray], np.ndarray], data, max_batches: int | None = None
) -> dict:
    """Perplexity, next-token accuracy and token count of ``predict`` over ``data``."""
    nll = hits = count = 0.0
    for x, y, m in iter_batches(data, max_batches):
        a, b, c = token_stats(np.asarray(predict(x)), y, m)
        nll, hits, count = nll + a, hits + b, count + c
    if count == 0:
        raise TfcompressError("data holds no unmasked target token to score")
    return {
        "perplexity": float(np.exp(nll / count)),
        "accuracy": hits / count,
        "nll": nll / count,
        "tokens": int(count),
    }


def classifier_accuracy(predict: Callable[[np.ndarray], np.ndarray], x, y) -> float:
    """Top-1 accuracy of class scores (or one sigmoid score for two classes)."""
    scores = np.asarray(predict(x))
    y = np.asarray(y).reshape(-1)
    pred = (scores.reshape(-1) > 0.5).astype(int) if scores.shape[-1:] in ((1,), ()) else (
        scores.argmax(-1)
    )
    return float((pred.reshape(-1) == y).mean())
