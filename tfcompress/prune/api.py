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
from tfcompress.core.layers import copy_model, kernel_matrix, matrix_shape, select_layers
from tfcompress.core.losses import lm_loss
from tfcompress.core.memory import release_freed_memory
from tfcompress.core.progress import print_msg
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
from tfcompress.prune.oneshot import (
    SparseGPTPruner,
    WandaPruner,
    WandaScorer,
    calibrate_layers,
    masks_from_scores,
    taylor_gradients,
)
from tfcompress.prune.scores import magnitude_scores, taylor_scores
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


def _checked(model, config) -> list[tuple[str, object]]:
    """The layers ``config`` select, their input sizes checked against an N:M pattern."""
    layers = select_layers(model, config.layer_types, config.include, config.exclude,
                           method="prune")
    if config.nm is not None:
        bad = [p for p, la in layers if matrix_shape(la)[0] % config.nm[1]]
        if bad:
            raise TfcompressError(
                f"pattern {config.pattern!r} needs each layer's input size divisible by "
                f"{config.nm[1]}; not so for {bad}: exclude them"
            )
    return layers


def _target(model, config, inplace: bool) -> tuple[object, list]:
    """The model to prune (a copy unless ``inplace``) and its selected layers."""
    layers = _checked(model, config)
    if inplace:
        return model, layers
    target = copy_model(model)
    return target, select_layers(target, config.layer_types, config.include,
                                 config.exclude, method="prune")


def _attached(target, layers, config, masks: dict | None, verbose: int):
    """``target`` with its pruning state (masks, schedule) attached; the summary printed."""
    attach_state(target, PruningState(layers, config, masks))
    release_freed_memory()  # the masks' temporaries, before the caller's next step
    if verbose:
        print_msg(summary_table(sparsity_summary(target)))
    return target


@register_handler(MagnitudeConfig)
def _magnitude(model, config: MagnitudeConfig, calibration=None, *, inplace: bool = False,
               verbose: int = 1, loss=None):
    """|w|, at once or on a schedule (masks all ones until ``UpdatePruning`` sets them)."""
    if config.pattern in STRUCTURED:
        return prune_structured(model, config)
    target, layers = _target(model, config, inplace)
    masks = None
    if config.schedule is None:
        masks = masks_from_scores(layers, {p: magnitude_scores(kernel_matrix(la))
                                           for p, la in layers}, config)
    return _attached(target, layers, config, masks, verbose)


@register_handler(TaylorConfig)
def _taylor(model, config: TaylorConfig, calibration=None, *, inplace: bool = False,
            verbose: int = 1, loss=None):
    """|w·dL/dw| summed over ``(inputs, targets[, weights])`` batches."""
    if calibration is not None:  # read once, checked before any work
        calibration = (calibration if isinstance(calibration, tuple | np.ndarray)
                       else list(calibration))
        check_calibration(model, [calibration] if isinstance(calibration, tuple)
                          else calibration, "calibration")
    _checked(model, config)
    if calibration is None:
        raise TfcompressError(
            "calibration is required for method='taylor': give (inputs, targets) batches"
        )
    target, layers = _target(model, config, inplace)
    grads = taylor_gradients(target, layers, calibration, loss or lm_loss(), verbose)
    scores = {p: taylor_scores(kernel_matrix(la), grads[p]) for p, la in layers}
    return _attached(target, layers, config, masks_from_scores(layers, scores, config),
                     verbose)


@register_handler(WandaConfig)
def _wanda(model, config: WandaConfig, calibration=None, *, inplace: bool = False,
           verbose: int = 1, loss=None):
    """|W|·||X|| block by block (``scope="global"``: the dense model's scores, one
    threshold), or whole neurons / heads ranked by it."""
    batches = calibration_batches(calibration, model)  # read once, checked before any work
    if config.pattern in STRUCTURED:
        return prune_structured(model, config, batches)
    target, layers = _target(model, config, inplace)
    if config.scope == "layer":
        masks = calibrate_layers(target, layers, config, batches, WandaPruner(config),
                                 verbose=verbose)
    else:  # nothing changes until every layer is scored
        scores = calibrate_layers(target, layers, config, batches, WandaScorer(),
                                  sequential=False, verbose=verbose)
        masks = masks_from_scores(layers, scores, config)
    return _attached(target, layers, config, masks, verbose)


@register_handler(SparseGPTConfig)
def _sparsegpt(model, config: SparseGPTConfig, calibration=None, *, inplace: bool = False,
               verbose: int = 1, loss=None):
    """SparseGPT's Hessian reconstruction, block by block."""
    batches = calibration_batches(calibration, model)  # read once, checked before any work
    target, layers = _target(model, config, inplace)
    masks = calibrate_layers(target, layers, config, batches, SparseGPTPruner(config),
                             verbose=verbose)
    return _attached(target, layers, config, masks, verbose)
