"""Initialise a shallower student from its teacher: measure block importance, keep the best.

A block whose output is nearly its input (cosine similarity close to 1 over real tokens)
changes little and can be dropped first (Men et al. 2024, "ShortGPT"; Minitron's depth
pruning). The student keeps the teacher's embeddings, final norm, head and the chosen blocks,
then is distilled on logits.

Example:
    >>> scores = block_importance(teacher, [windows])     # one score per block; batches of ids
    >>> student = take_blocks(teacher, most_important(scores, n_keep=1))
    >>> [la.name for la in student.layers if la.name.endswith("_add2")]
    ['block0_add2']
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from tfcompress.core.layers import require_keras3
from tfcompress.core.shallow import shallow_copy
from tfcompress.errors import TfcompressError


def cosine_importance(block_in, block_out, mask=None) -> float:
    """``1 - mean cosine(input, output)`` over positions (masked ones left out).

    Example:
        >>> cosine_importance(np.ones((1, 2, 3)), -np.ones((1, 2, 3)))
        2.0
    """
    a = np.asarray(block_in, np.float64).reshape(-1, np.shape(block_in)[-1])
    b = np.asarray(block_out, np.float64).reshape(-1, np.shape(block_out)[-1])
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1),
                                       1e-12)
    weights = np.ones(len(cos)) if mask is None else np.asarray(mask, np.float64).reshape(-1)
    return float(1.0 - (cos * weights).sum() / max(weights.sum(), 1e-12))


def block_count(model) -> int:
    """Blocks of a `build_gpt` / `build_llama` model (layers ``block{i}_add2``)."""
    names = {la.name for la in model.layers}
    n = 0
    while f"block{n}_add2" in names:
        n += 1
    if n == 0:
        raise TfcompressError(f"model {model.name!r} has no blocks named block0_add2...: "
                              "block importance needs a build_gpt or build_llama model")
    return n


def block_importance(model, data) -> np.ndarray:
    """Importance of each block of ``model`` on ``data`` (``(x, y, mask)`` or ``x`` batches).

    A block's input is the first input of its ``block{i}_add1`` residual add, its output the
    ``block{i}_add2`` layer: the same for `build_gpt` and `build_llama` models.
    """
    require_keras3(model, "model")
    n = block_count(model)
    taps = []
    for i in range(n):
        taps += [model.get_layer(f"block{i}_add1").input[0],
                 model.get_layer(f"block{i}_add2").output]
    probe = keras.Model(model.inputs, taps)
    totals, weights = np.zeros(n), 0.0
    for batch in data:
        x, mask = (batch[0], batch[2]) if isinstance(batch, tuple | list) else (batch, None)
        outputs = probe(x, training=False)
        share = float(np.sum(mask)) if mask is not None else float(np.size(x))
        for i in range(n):
            totals[i] += share * cosine_importance(outputs[2 * i], outputs[2 * i + 1], mask)
        weights += share
    if not weights:
        raise TfcompressError("data is empty: block importance needs at least one batch")
    return totals / weights


def most_important(scores: Sequence[float], n_keep: int) -> list[int]:
    """Indices of the ``n_keep`` highest scores, in block order.

    Example:
        >>> most_important([0.5, 0.1, 0.9, 0.2], 2)
        [0, 2]
    """
    if not isinstance(n_keep, int) or not 1 <= n_keep <= len(scores):
        raise TfcompressError(f"n_keep must be an integer in [1, {len(scores)}], got {n_keep!r}")
    return sorted(int(i) for i in np.argsort(-np.asarray(scores), kind="stable")[:n_keep])


def take_blocks(model, keep: Sequence[int], name: str = "student"):
    """A shallower copy of a `build_gpt` or `build_llama` model (or of a family registered with
    `tfcompress.core.shallow.register_shallow_copy`) holding blocks ``keep``.

    Embeddings, final norm and head are copied too; ``model`` is not changed.
    """
    require_keras3(model, "model")
    n = block_count(model)
    keep = [int(i) for i in keep]
    if not keep or len(set(keep)) != len(keep) or any(not 0 <= i < n for i in keep):
        raise TfcompressError(f"keep must list distinct block indices in [0, {n}), got {keep}")
    return shallow_copy(model, keep, name=name)


__all__ = ["block_count", "block_importance", "cosine_importance", "most_important",
           "take_blocks"]
