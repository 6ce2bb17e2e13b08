"""`prune`: the one verb of `tfcompress.prune` for Keras 3 models; the config's class picks
the criterion (`MagnitudeConfig`, `TaylorConfig`, `WandaConfig`, `SparseGPTConfig`, each
registered with its handler here).

Example:
    >>> pruned = prune(model, WandaConfig(sparsity=0.5), calibration=ids)
    >>> sparsity_summary(pruned)["total"]["sparsity"]
    0.5
"""

from __future__ import annotations

import numpy as np

from tfcompress.core.calibration import calibration_batches
from tfcompress.core.deprecation import renamed_argument
from tfcompress.core.layers import copy_model, matrix_shape, select_layers
from tfcompress.core.losses import lm_loss
from tfcompress.core.registry import (
    MethodConfig,
    handler_for,
    register_handler,
    resolve_config,
)
from tfcompress.core.validation import check_calibration, check_model
from tfcompress.errors import TfcompressError
from tfcompress.prune.config import (
    DEFAULT_METHOD,
    STRUCTURED,
    MagnitudeConfig,
    PruneConfig,
    SparseGPTConfig,
    TaylorConfig,
    WandaConfig,
)
from tfcompress.prune.oneshot import prune_oneshot
from tfcompress.prune.structured import prune_structured
from tfcompress.prune.training import (
    PruningState,
    attach_state,
    sparsity_summary,
    summary_table,
)


def prune(model, config: MethodConfig | PruneConfig | None = None, calibration=None, *,
          loss=None, inplace: bool = False, verbose: int = 1, data=None, **overrides):
    """Prune a Keras 3 model's kernels (nested layers included) by ``config``'s criterion
    (`MagnitudeConfig` when None) and return the pruned model.

    - With a `MagnitudeConfig` ``schedule`` the returned copy gets mask variables (all ones
      at first): train it with ``fit(..., callbacks=[UpdatePruning()])``, then `strip_pruning`.
    - Without one, the criterion prunes at once from ``calibration`` (inputs for
      wanda / sparsegpt; ``(inputs, targets[, weights])`` batches for taylor). The masks stay
      attached, so a fine-tune with `UpdatePruning` keeps the pruned weights at zero.
    - ``pattern="neurons"`` / ``"heads"`` return a new, narrower functional model.

    ``overrides`` replace config fields (``prune(model, sparsity=0.8)``). The user's model is
    copied unless ``inplace=True`` (structured pruning always builds a new model). ``loss``
    is taylor's loss (default: sparse categorical cross-entropy on logits). ``verbose``
    prints the sparsity per layer (0: nothing). ``data`` is the deprecated name of
    ``calibration``; the old ``method="..."`` keyword and `PruneConfig` work for one release
    with a warning.

    Example:
        >>> pruned = prune(model, SparseGPTConfig(pattern="2:4"), calibration=ids)
    """
    calibration = renamed_argument("data", data, "calibration", calibration)
    check_model(model, "prune", legacy_hint="tfcompress.prune.prune_tf_keras")
    config = resolve_config("prune", config, overrides, DEFAULT_METHOD, legacy=PruneConfig)
    return handler_for("prune", config)(model, config.for_model(model), calibration,
                                        inplace=inplace, verbose=verbose, loss=loss)


@register_handler(MagnitudeConfig)
@register_handler(TaylorConfig)
@register_handler(WandaConfig)
@register_handler(SparseGPTConfig)
def _prune(model, config, calibration=None, *, inplace: bool = False, verbose: int = 1,
           loss=None):
    """Every built-in criterion: scores or SparseGPT, at once or on a schedule, unstructured,
    N:M or structured (`PruneConfig` holds the resolved settings)."""
    config = config.settings()
    if config.schedule is None and config.method in ("wanda", "sparsegpt"):
        # read once (a generator cannot be read twice), checked before any work
        calibration = calibration_batches(calibration, model)
    if config.schedule is None and config.method == "taylor" and calibration is not None:
        calibration = (calibration if isinstance(calibration, tuple | np.ndarray)
                       else list(calibration))
        check_calibration(model, [calibration] if isinstance(calibration, tuple)
                          else calibration, "calibration")
    if config.pattern in STRUCTURED:
        return prune_structured(model, config, calibration)
    layers = select_layers(model, config.layer_types, config.include, config.exclude,
                           method="prune")
    if config.nm is not None:
        bad = [p for p, la in layers if matrix_shape(la)[0] % config.nm[1]]
        if bad:
            raise TfcompressError(
                f"pattern {config.pattern!r} needs each layer's input size divisible by "
                f"{config.nm[1]}; not so for {bad}: exclude them"
            )
    if config.schedule is None and config.method == "taylor" and calibration is None:
        raise TfcompressError(
            "calibration is required for method='taylor': give (inputs, targets) batches"
        )
    target = model if inplace else copy_model(model)
    if target is not model:
        layers = select_layers(target, config.layer_types, config.include, config.exclude,
                               method="prune")
    if config.schedule is not None:
        state = PruningState(layers, config)
    else:
        if loss is None and config.method == "taylor":
            loss = lm_loss()
        masks = prune_oneshot(target, layers, config, calibration, loss, verbose)
        state = PruningState(layers, config, masks)
    attach_state(target, state)
    if verbose:
        print(summary_table(sparsity_summary(target)))
    return target
