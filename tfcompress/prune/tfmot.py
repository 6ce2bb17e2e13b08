"""Thin TF-MOT path for tf.keras (Keras 2) models: magnitude pruning with schedules and m_by_n.

Unlike ``tfmot.sparsity.keras.prune_low_magnitude(model)``, which raises on the first layer
it cannot wrap (a ``TFOpLambda`` from ``x + h``, a custom layer), this wraps every layer it
can and reports the rest.

Example:
    >>> pruned, skipped = prune_tf_keras(tf_keras_model, PruneConfig(sparsity=0.5))
    >>> pruned.compile(...); pruned.fit(x, y, callbacks=tf_keras_callbacks())
    >>> plain = strip_tf_keras(pruned)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tfcompress.core.layers import require_tf_keras
from tfcompress.errors import TfcompressError
from tfcompress.prune.config import PruneConfig


def prune_tf_keras(model, config: PruneConfig | None = None, **overrides):
    """Wrap a copy of a tf.keras model's prunable layers with TF-MOT's ``PruneLowMagnitude``.

    Uses ``config.schedule`` (default ``ConstantSparsity(config.sparsity, 0, frequency=1)``), an N:M
    ``pattern`` as TF-MOT's ``sparsity_m_by_n`` and ``include``/``exclude`` on layer names.
    Returns ``(pruned_model, skipped)`` where ``skipped`` maps layer names TF-MOT could not
    prune to the reason. Train with `tf_keras_callbacks`, finish with `strip_tf_keras`.
    """
    require_tf_keras(model, native_hint="tfcompress.prune.prune")
    config = replace(config or PruneConfig(), **overrides)
    if config.method != "magnitude" or config.scope != "layer" or config.pattern in (
        "neurons", "heads"
    ):
        raise TfcompressError(
            "TF-MOT prunes each layer by magnitude (unstructured or N:M): got "
            f"method={config.method!r}, scope={config.scope!r}, pattern={config.pattern!r}; "
            "for other criteria convert to Keras 3 and use tfcompress.prune.prune"
        )
    if config.nm is not None:
        m = config.nm[1]
        bad = [layer.name for layer in model.layers if layer.weights and config.selects(
            layer.name) and int(np.prod(layer.weights[0].shape[:-1])) % m]
        if bad:  # TF-MOT would accept them and prune an irregular pattern
            raise TfcompressError(
                f"pattern {config.pattern!r} needs each layer's input size divisible by {m}; "
                f"not so for {bad}: exclude them"
            )
    import tf_keras
    from tensorflow_model_optimization.sparsity import keras as tfmot_sparsity

    # frequency=1: TF-MOT's default (100) leaves runs shorter than 100 steps unpruned
    schedule = config.build_schedule() or tfmot_sparsity.ConstantSparsity(
        config.sparsity, 0, frequency=1
    )
    skipped: dict[str, str] = {}
    wrapped: list[str] = []

    def wrap(layer):
        clone = fresh_layer(layer)
        if not layer.weights or not config.selects(layer.name):
            return clone
        try:
            out = tfmot_sparsity.prune_low_magnitude(
                clone, pruning_schedule=schedule, sparsity_m_by_n=config.nm
            )
        except (ValueError, TypeError) as err:
            skipped[layer.name] = f"{type(layer).__name__}: {str(err).splitlines()[0][:120]}"
            return clone
        wrapped.append(layer.name)
        return out

    pruned = tf_keras.models.clone_model(model, clone_function=wrap)
    # clone_model keeps the layer order; wrapped layers are renamed prune_low_magnitude_*
    for layer, target in zip(model.layers, pruned.layers, strict=True):
        if layer.weights:
            getattr(target, "layer", target).set_weights(layer.get_weights())
    for layer in model.layers:
        if not layer.weights and type(layer).__name__ in ("TFOpLambda", "Lambda"):
            skipped.setdefault(layer.name, f"{type(layer).__name__}: no weights, left as is")
    if not wrapped:
        raise TfcompressError(
            f"no prunable layer matched in {model.name!r} (include={config.include!r}, "
            f"exclude={config.exclude!r}); skipped: {skipped or 'none'}"
        )
    return pruned, skipped


def fresh_layer(layer):
    """A new, built layer from ``layer``'s config. MultiHeadAttention is run once on zeros:
    it builds its projections only when first called, and TF-MOT's wrapper reads their
    kernels when it is built."""
    clone = layer.__class__.from_config(layer.get_config())
    if type(layer).__name__ == "MultiHeadAttention" and getattr(layer, "_query_shape", None):
        import tensorflow as tf

        def zeros(shape):
            return tf.zeros([d or 1 for d in shape.as_list()])

        clone(zeros(layer._query_shape), zeros(layer._value_shape))
    return clone


def tf_keras_callbacks(log_dir: str | None = None) -> list:
    """TF-MOT's ``UpdatePruningStep`` (and ``PruningSummaries`` with ``log_dir``, which
    needs the tensorboard package)."""
    import importlib.util

    from tensorflow_model_optimization.sparsity import keras as tfmot_sparsity

    if log_dir and importlib.util.find_spec("tensorboard") is None:
        raise TfcompressError(
            "log_dir needs the tensorboard package for TF-MOT's PruningSummaries "
            "(pip install tensorboard), or pass log_dir=None"
        )

    callbacks = [tfmot_sparsity.UpdatePruningStep()]
    if log_dir:
        callbacks.append(tfmot_sparsity.PruningSummaries(log_dir=str(log_dir)))
    return callbacks


def strip_tf_keras(model):
    """TF-MOT's ``strip_pruning``: a plain tf.keras model with the zeros in place."""
    require_tf_keras(model, native_hint="tfcompress.prune.strip_pruning")
    from tensorflow_model_optimization.sparsity import keras as tfmot_sparsity

    return tfmot_sparsity.strip_pruning(model)
