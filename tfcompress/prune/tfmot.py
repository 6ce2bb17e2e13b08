"""Thin TF-MOT path for tf.keras (Keras 2) models: magnitude pruning with schedules and m_by_n.

Unlike ``tfmot.sparsity.keras.prune_low_magnitude(model)``, which raises on the first layer
it cannot wrap (a ``TFOpLambda`` from ``x + h``, a custom layer), this wraps every layer it
can and reports the rest; a graph that ``clone_model`` cannot rebuild from its config (a
constant such as ``tf.range(seq_len)`` positions in a call) is re-run layer by layer.

Example:
    >>> pruned, skipped = prune_tf_keras(tf_keras_model, MagnitudeConfig(sparsity=0.5))
    >>> pruned.compile(...); pruned.fit(x, y, callbacks=tf_keras_callbacks())
    >>> plain = strip_tf_keras(pruned)
"""

from __future__ import annotations

import numpy as np

from tfcompress.core.layers import require_tf_keras
from tfcompress.core.registry import resolve_config
from tfcompress.errors import TfcompressError
from tfcompress.prune.config import DEFAULT_METHOD, MagnitudeConfig, PruneConfig


def prune_tf_keras(model, config: MagnitudeConfig | PruneConfig | None = None, **overrides):
    """Wrap a copy of a tf.keras model's prunable layers with TF-MOT's ``PruneLowMagnitude``.

    Uses ``config.schedule`` (default ``ConstantSparsity(config.sparsity, 0, frequency=1)``), an N:M
    ``pattern`` as TF-MOT's ``sparsity_m_by_n`` and ``include``/``exclude`` on layer names.
    Returns ``(pruned_model, skipped)`` where ``skipped`` maps layer names TF-MOT could not
    prune to the reason. Train with `tf_keras_callbacks`, finish with `strip_tf_keras`.
    """
    require_tf_keras(model, native_hint="tfcompress.prune.prune")
    config = resolve_config("prune", config, overrides, DEFAULT_METHOD, legacy=PruneConfig)
    scope = getattr(config, "scope", "layer")  # SparseGPT has none
    if not isinstance(config, MagnitudeConfig) or scope != "layer" or config.pattern in (
        "neurons", "heads"
    ):
        raise TfcompressError(
            "TF-MOT prunes each layer by magnitude (unstructured or N:M): got "
            f"method={config.method!r}, scope={scope!r}, pattern={config.pattern!r}; "
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
    clones: dict[int, object] = {}

    def wrap(layer):
        clone = clones[id(layer)] = fresh_layer(layer)
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
        clones[id(layer)] = out
        return out

    try:
        pruned = tf_keras.models.clone_model(model, clone_function=wrap)
    except (TypeError, AttributeError, ValueError):
        # clone_model rebuilds the graph from its config, which cannot hold a constant tensor
        # a node was called with (positions from tf.range(seq_len)); re-run the graph instead
        skipped.clear(), wrapped.clear(), clones.clear()
        pruned = rebuild_by_calls(model, wrap)
    for layer in model.layers:
        if layer.weights:
            target = clones[id(layer)]
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


def rebuild_by_calls(model, replace):
    """A new functional tf.keras model: ``model``'s graph run on new inputs with each layer
    ``replace(layer)``d, the arguments of every call (constants included) as recorded (what
    ``Functional._run_internal_graph`` does, with the layers swapped)."""
    import tensorflow as tf
    import tf_keras

    tensors, usage = {}, model._tensor_usage_count
    inputs = []
    for t in model.inputs:
        x = tf_keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name.split(":")[0])
        inputs.append(x)
        tensors[str(id(t))] = [x] * usage[str(id(t))]
    swapped = {}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(i not in tensors for i in node.flat_input_ids):
                continue
            layer = node.layer
            if id(layer) not in swapped:
                swapped[id(layer)] = replace(layer)
            args, kwargs = node.map_arguments(tensors)
            # by name after the first (a wrapper's call takes inputs, training, **kwargs)
            names = layer._call_spec.arg_names[1:len(args)]
            kwargs = {**dict(zip(names, args[1:], strict=True)), **kwargs}
            outputs = swapped[id(layer)](args[0], **kwargs)
            for x_id, y in zip(node.flat_output_ids, tf.nest.flatten(outputs), strict=True):
                tensors[x_id] = [y] * usage[x_id]
    outputs = [tensors[str(id(t))].pop() for t in model.outputs]
    return tf_keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)


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
