"""Pruning for Keras 3 (and tf.keras through TF-MOT): schedules during fit, one-shot
magnitude / Taylor / Wanda / SparseGPT, unstructured, N:M and structured patterns.

Example:
    >>> from tfcompress.prune import WandaConfig, prune, strip_pruning, UpdatePruning
    >>> pruned = prune(model, WandaConfig(sparsity=0.5), calibration=calibration_ids)
    >>> pruned.fit(data, callbacks=[UpdatePruning()])   # optional fine-tune, zeros stay zero
    >>> plain = strip_pruning(pruned)
"""

from tfcompress.core.modules import make_callable
from tfcompress.prune.api import prune
from tfcompress.prune.config import (
    DEFAULT_METHOD,
    METHODS,
    MagnitudeConfig,
    PruneConfig,
    SparseGPTConfig,
    TaylorConfig,
    WandaConfig,
)
from tfcompress.prune.tfmot import prune_tf_keras, strip_tf_keras, tf_keras_callbacks
from tfcompress.prune.training import (
    PruningState,
    UpdatePruning,
    keep_zeros,
    sparsity_summary,
    strip_pruning,
    summary_table,
)

make_callable(__name__, prune)

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "MagnitudeConfig",
    "PruneConfig",
    "PruningState",
    "SparseGPTConfig",
    "TaylorConfig",
    "UpdatePruning",
    "WandaConfig",
    "keep_zeros",
    "prune",
    "prune_tf_keras",
    "sparsity_summary",
    "strip_pruning",
    "strip_tf_keras",
    "summary_table",
    "tf_keras_callbacks",
]
