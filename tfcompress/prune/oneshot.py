"""One-shot pruning of a Keras 3 model's kernels from scores or SparseGPT, no training.

Activation-aware criteria (Wanda, SparseGPT) go block by block through the calibration
engine (`tfcompress.core.calibrate`): each block's layers are pruned from input statistics
of the model as pruned so far, so later blocks see already-pruned inputs.
"""

from __future__ import annotations

import numpy as np

from tfcompress.core.calibration import calibrate, calibration_batches, run_key
from tfcompress.core.layers import (
    kernel_axes,
    kernel_matrix,
    kernel_of,
    set_kernel_matrix,
    to_matrix,
)
from tfcompress.core.progress import progress_bar
from tfcompress.errors import TfcompressError
from tfcompress.prune.config import PruneConfig
from tfcompress.prune.masks import global_masks, pattern_mask
from tfcompress.prune.scores import magnitude_scores, taylor_scores, wanda_scores
from tfcompress.prune.sparsegpt import sparsegpt_prune


def _prune_layer(path: str, layer, stats, config: PruneConfig) -> np.ndarray:
    w = kernel_matrix(layer)
    if config.method == "sparsegpt":
        new_w, mask = sparsegpt_prune(w, stats.take_hessian(), config.sparsity, config.nm,
                                      config.block_size, config.damping, layer=path)
    else:
        mask = pattern_mask(wanda_scores(w, stats), config.sparsity, config.nm, per_output=True)
        new_w = w * mask
    set_kernel_matrix(layer, new_w)
    return mask


def calibration_needs(config: PruneConfig) -> tuple[str, ...]:
    """The `InputStats` a one-shot method needs: ``X^T X`` for SparseGPT, ``sum x^2`` else."""
    return ("xtx",) if config.method == "sparsegpt" else ("sq",)


def block_pruner(config: PruneConfig):
    """The calibration engine's ``compress`` for Wanda / SparseGPT: each layer of a block
    pruned in place from its input statistics; returns ``{path: mask}``.

    Example:
        >>> config = PruneConfig(method="sparsegpt", sparsity=0.5)
        >>> calibrate(model, layers, ids, block_pruner(config), needs=calibration_needs(config))
    """
    def compress(group, stats):
        return {p: _prune_layer(p, la, stats[p], config) for p, la in group}

    return compress


def _calibrate(model, layers, config: PruneConfig, data, compress, sequential: bool,
               verbose: int):
    return calibrate(model, layers, data, compress, needs=calibration_needs(config),
                     blocks=config.blocks, sequential=sequential, max_rows=config.max_rows,
                     folder=config.resume_dir, key=run_key(config), verbose=verbose)


def prune_blockwise(model, layers: list[tuple[str, object]], config: PruneConfig,
                    data, verbose: int = 1) -> dict[str, np.ndarray]:
    """Wanda / SparseGPT block by block, in place; returns ``{path: mask}``."""
    return _calibrate(model, layers, config, data, block_pruner(config), sequential=True,
                      verbose=verbose)


def taylor_gradients(model, layers: list[tuple[str, object]], data, loss,
                     verbose: int = 1) -> dict[str, list]:
    """Per-batch gradients of ``loss`` w.r.t. each kernel, as ``(d_in, d_out)`` matrices."""
    import tensorflow as tf

    items = [data] if isinstance(data, tuple) else list(data)
    if not items or any(not isinstance(b, tuple | list) or len(b) not in (2, 3) for b in items):
        raise TfcompressError(
            "calibration for method='taylor' must be (inputs, targets[, sample_weight]) batches"
        )
    calibration_batches(items, model)
    kernels = [kernel_of(la) for _, la in layers]
    grads: dict[str, list] = {p: [] for p, _ in layers}
    bar = progress_bar(len(items), verbose=verbose, unit_name="batch")
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
                 loss=None, verbose: int = 1) -> dict[str, np.ndarray]:
    """Importance of every weight of ``layers`` at once (magnitude, taylor or wanda)."""
    if config.method == "magnitude":
        return {p: magnitude_scores(kernel_matrix(la)) for p, la in layers}
    if config.method == "taylor":
        grads = taylor_gradients(model, layers, data, loss, verbose)
        return {p: taylor_scores(kernel_matrix(la), grads[p]) for p, la in layers}
    if config.method == "wanda":  # scores of the dense model: nothing changes until all exist
        return _calibrate(model, layers, config, data, lambda group, stats: {
            p: wanda_scores(kernel_matrix(la), stats[p]) for p, la in group}, sequential=False,
            verbose=verbose)
    raise TfcompressError(f"method {config.method!r} has no stand-alone scores")


def prune_oneshot(model, layers: list[tuple[str, object]], config: PruneConfig, data=None,
                  loss=None, verbose: int = 1) -> dict[str, np.ndarray]:
    """Prune ``layers`` of ``model`` in place by ``config``; returns ``{path: mask}``.
    ``verbose=0`` hides the calibration progress bar."""
    if config.method in ("wanda", "sparsegpt") and config.scope == "layer":
        return prune_blockwise(model, layers, config, data, verbose)
    scores = score_layers(model, layers, config, data, loss, verbose)
    if config.scope == "global":
        masks = global_masks(scores, config.sparsity)
    else:
        masks = {p: pattern_mask(s, config.sparsity, config.nm,
                                 per_output=config.method == "wanda")
                 for p, s in scores.items()}
    for path, layer in layers:
        set_kernel_matrix(layer, kernel_matrix(layer) * masks[path])
    return masks
