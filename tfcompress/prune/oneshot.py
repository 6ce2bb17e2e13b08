"""One-shot pruning of a Keras 3 model's kernels from scores or SparseGPT, no training.

Activation-aware criteria go block by block through the calibration engine
(`tfcompress.core.calibrate`) as `Compressor` classes (`SparseGPTPruner`, `WandaPruner`,
`WandaScorer`): each block's layers are pruned from input statistics of the model as pruned
so far, so later blocks see already-pruned inputs.
"""

from __future__ import annotations

import numpy as np

from tfcompress.core.calibration import calibrate, calibration_batches, run_key
from tfcompress.core.compressor import Compressor
from tfcompress.core.layers import (
    kernel_axes,
    kernel_matrix,
    kernel_of,
    set_kernel_matrix,
    to_matrix,
)
from tfcompress.core.progress import progress_bar
from tfcompress.errors import TfcompressError
from tfcompress.prune.config import SparseGPTConfig, WandaConfig
from tfcompress.prune.masks import global_masks, pattern_mask
from tfcompress.prune.scores import wanda_scores
from tfcompress.prune.sparsegpt import sparsegpt_prune


class SparseGPTPruner(Compressor):
    """SparseGPT as a `Compressor`: each layer pruned from its input Hessian with SparseGPT's
    reconstruction (``config``'s sparsity, N:M pattern, ``block_size``, ``damping``); the
    result is its mask.

    Example:
        >>> masks = calibrate(model, layers, ids, SparseGPTPruner(SparseGPTConfig()))
    """

    needs = ("xtx",)

    def __init__(self, config: SparseGPTConfig):
        self.config = config

    def compress_layer(self, path: str, layer, stats) -> np.ndarray:
        s = self.config
        w, mask = sparsegpt_prune(kernel_matrix(layer), stats.take_hessian(), s.sparsity, s.nm,
                                  s.block_size, s.damping, layer=path, overwrite_h=True)
        set_kernel_matrix(layer, w)
        return mask.astype(bool)  # every layer's mask is held until attached: 1 byte a weight


class WandaScorer(Compressor):
    """Wanda's scores ``|W| * ||X_j||`` of each layer as a `Compressor`; the weights are left
    as they are (for one global threshold once every layer is scored)."""

    needs = ("sq",)

    def compress_layer(self, path: str, layer, stats) -> np.ndarray:
        return wanda_scores(kernel_matrix(layer), stats)


class WandaPruner(WandaScorer):
    """Wanda as a `Compressor`: each layer's weights with the lowest scores per output zeroed
    (``config``'s sparsity and N:M pattern); the result is its mask.

    Example:
        >>> masks = calibrate(model, layers, ids, WandaPruner(WandaConfig()))
    """

    def __init__(self, config: WandaConfig):
        self.config = config

    def compress_layer(self, path: str, layer, stats) -> np.ndarray:
        w = kernel_matrix(layer)
        mask = pattern_mask(wanda_scores(w, stats), self.config.sparsity, self.config.nm,
                            per_output=True)
        set_kernel_matrix(layer, w * mask)
        return mask.astype(bool)  # held until attached, as SparseGPT's


def calibrate_layers(model, layers: list[tuple[str, object]],
                     config: WandaConfig | SparseGPTConfig, data, compressor: Compressor,
                     sequential: bool = True, verbose: int = 1) -> dict[str, np.ndarray]:
    """``compressor`` run block by block over ``layers`` with ``config``'s ``blocks``,
    ``max_rows``, ``resume_dir`` and ``layerwise`` (SparseGPT's); returns its
    ``{path: result}``."""
    return calibrate(model, layers, data, compressor, blocks=config.blocks,
                     sequential=sequential, layerwise=getattr(config, "layerwise", False),
                     max_rows=config.max_rows,
                     folder=config.resume_dir, key=run_key(config), verbose=verbose)


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


def masks_from_scores(layers: list[tuple[str, object]], scores: dict[str, np.ndarray],
                      config, per_output: bool = False) -> dict[str, np.ndarray]:
    """Masks of ``scores`` (one threshold for ``config.scope == "global"``, else per layer in
    ``config``'s pattern, ``per_output``: per output column), applied to ``layers``' kernels
    in place."""
    if config.scope == "global":
        masks = global_masks(scores, config.sparsity)
    else:
        masks = {p: pattern_mask(s, config.sparsity, config.nm, per_output=per_output)
                 for p, s in scores.items()}
    for path, layer in layers:
        set_kernel_matrix(layer, kernel_matrix(layer) * masks[path])
    return masks
