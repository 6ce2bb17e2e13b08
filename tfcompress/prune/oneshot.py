"""One-shot pruning of a Keras 3 model's kernels from scores or SparseGPT, no training.

Activation-aware criteria (Wanda, SparseGPT) go layer by layer in the order the model calls
them: inputs of the next group of layers (those reading the same tensor, such as an attention
layer's query/key/value) are captured from the model as pruned so far, so later layers see
already-pruned inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from tfcompress.core.layers import (
    capture_inputs,
    kernel_axes,
    kernel_matrix,
    kernel_of,
    set_kernel_matrix,
    to_matrix,
)
from tfcompress.core.signature import model_inputs
from tfcompress.errors import TfcompressError
from tfcompress.prune.config import PruneConfig
from tfcompress.prune.masks import global_masks, pattern_mask
from tfcompress.prune.scores import hessian, magnitude_scores, taylor_scores, wanda_scores
from tfcompress.prune.sparsegpt import sparsegpt_prune


def input_batches(model, data, arg: str = "calibration") -> list:
    """Model-input batches from an array, a dict, or an iterable of them (or of
    ``(inputs, targets[, weights])`` tuples, whose inputs are used), shape-checked."""
    if data is None:
        raise TfcompressError(f"{arg} is required for this method: give calibration inputs")
    items = [data] if isinstance(data, np.ndarray | dict) else list(data)
    batches = [b[0] if isinstance(b, tuple | list) else b for b in items]
    if not batches:
        raise TfcompressError(f"{arg} is empty: give at least one batch of inputs")
    specs = model.inputs if len(getattr(model, "inputs", None) or []) == 1 else None
    for b in batches:
        if isinstance(b, dict) or specs is None:
            continue
        shape, expected = np.shape(b), tuple(specs[0].shape)
        if len(shape) != len(expected) or any(
            e is not None and s != e for s, e in zip(shape, expected, strict=True)
        ):
            raise TfcompressError(
                f"{arg} batches must have the model's input shape {expected}, got {shape}"
            )
    return batches


def call_order(model, layers: Sequence, batch) -> list:
    """``layers`` sorted by when the model first calls them on ``batch``."""
    seen: list[int] = []
    for layer in layers:
        original, key = layer.call, id(layer)

        def recording(*args, _id=key, _call=original, **kwargs):
            if _id not in seen:
                seen.append(_id)
            return _call(*args, **kwargs)

        layer.call = recording
    try:
        model(model_inputs(model, batch if isinstance(batch, dict) else np.asarray(batch[:1])),
              training=False)
    finally:
        for layer in layers:
            del layer.call
    rank = {i: n for n, i in enumerate(seen)}
    return sorted(layers, key=lambda la: rank.get(id(la), len(rank)))


def _prune_layer(layer, x: np.ndarray, config: PruneConfig) -> np.ndarray:
    w = kernel_matrix(layer)
    if config.method == "sparsegpt":
        new_w, mask = sparsegpt_prune(w, hessian(x, w.shape[0]), config.sparsity, config.nm,
                                      config.block_size, config.damping)
    else:
        mask = pattern_mask(wanda_scores(w, x), config.sparsity, config.nm, per_output=True)
        new_w = w * mask
    set_kernel_matrix(layer, new_w)
    return mask


def prune_sequential(model, layers: list[tuple[str, object]], config: PruneConfig,
                     batches: list) -> dict[str, np.ndarray]:
    """Wanda / SparseGPT layer by layer in call order, in place; returns the masks."""
    paths = {id(la): p for p, la in layers}
    remaining = call_order(model, [la for _, la in layers], batches[0])
    masks = {}
    bar = keras.utils.Progbar(len(remaining), unit_name="layer")
    window = 4
    while remaining:
        # the next group: the leading run of layers reading the same tensor (query/key/value);
        # capture a few layers ahead, more when the whole window turns out to be one group
        while True:
            ahead = remaining[:window]
            inputs = capture_inputs(model, ahead, batches, max_rows=config.max_rows)
            first = inputs[paths[id(ahead[0])]]
            size = 1
            while size < len(ahead) and np.array_equal(inputs[paths[id(ahead[size])]], first):
                size += 1
            if size < len(ahead) or len(ahead) == len(remaining):
                break
            window *= 2
        for layer in ahead[:size]:
            masks[paths[id(layer)]] = _prune_layer(layer, inputs[paths[id(layer)]], config)
            bar.add(1)
        remaining = remaining[size:]
    return masks


def taylor_gradients(model, layers: list[tuple[str, object]], data, loss) -> dict[str, list]:
    """Per-batch gradients of ``loss`` w.r.t. each kernel, as ``(d_in, d_out)`` matrices."""
    import tensorflow as tf

    items = [data] if isinstance(data, tuple) else list(data)
    if not items or any(not isinstance(b, tuple | list) or len(b) not in (2, 3) for b in items):
        raise TfcompressError(
            "calibration for method='taylor' must be (inputs, targets[, sample_weight]) batches"
        )
    input_batches(model, items)
    kernels = [kernel_of(la) for _, la in layers]
    grads: dict[str, list] = {p: [] for p, _ in layers}
    bar = keras.utils.Progbar(len(items), unit_name="batch")
    for batch in items:
        x, y = batch[0], batch[1]
        weight = batch[2] if len(batch) == 3 else None
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=False), sample_weight=weight)
        for (path, _), g in zip(layers, tape.gradient(value, kernels), strict=True):
            if g is None:
                raise TfcompressError(f"the loss does not depend on layer {path!r}'s kernel")
            g = np.asarray(tf.convert_to_tensor(g))  # embeddings give IndexedSlices
            grads[path].append(to_matrix(g, kernel_axes(dict(layers)[path])))
        bar.add(1)
    return grads


def score_layers(model, layers: list[tuple[str, object]], config: PruneConfig, data=None,
                 loss=None) -> dict[str, np.ndarray]:
    """Importance of every weight of ``layers`` at once (magnitude, taylor or wanda)."""
    if config.method == "magnitude":
        return {p: magnitude_scores(kernel_matrix(la)) for p, la in layers}
    if config.method == "taylor":
        grads = taylor_gradients(model, layers, data, loss)
        return {p: taylor_scores(kernel_matrix(la), grads[p]) for p, la in layers}
    if config.method == "wanda":
        inputs = capture_inputs(model, [la for _, la in layers], input_batches(model, data),
                                max_rows=config.max_rows)
        return {p: wanda_scores(kernel_matrix(la), inputs[p]) for p, la in layers}
    raise TfcompressError(f"method {config.method!r} has no stand-alone scores")


def prune_oneshot(model, layers: list[tuple[str, object]], config: PruneConfig, data=None,
                  loss=None) -> dict[str, np.ndarray]:
    """Prune ``layers`` of ``model`` in place by ``config``; returns ``{path: mask}``."""
    if config.method in ("wanda", "sparsegpt") and config.scope == "layer":
        return prune_sequential(model, layers, config, input_batches(model, data))
    scores = score_layers(model, layers, config, data, loss)
    if config.scope == "global":
        masks = global_masks(scores, config.sparsity)
    else:
        masks = {p: pattern_mask(s, config.sparsity, config.nm,
                                 per_output=config.method == "wanda")
                 for p, s in scores.items()}
    for path, layer in layers:
        set_kernel_matrix(layer, kernel_matrix(layer) * masks[path])
    return masks
