"""TF-MOT path for tf.keras (Keras 2) models: quantization-aware training that annotates only
the layers TF-MOT supports (a transformer's Dense layers quantize, its MultiHeadAttention and
LayerNormalization stay float instead of crashing ``quantize_model``), int8 TFLite, and
TF-MOT k-means weight clustering. int8 TFLite files come from
`tfcompress.export.export_tflite`, which takes tf.keras and QAT models too.

Example:
    >>> qat_model = tfmot_quantize(tf_keras_model)      # then compile + fit as usual
    >>> export_tflite(qat_model, "model.tflite", "int8", 64, calibration=windows)
    >>> clustered = tfmot_cluster(tf_keras_model, clusters=16)
"""

from __future__ import annotations

from tfcompress.core.layers import require_tf_keras
from tfcompress.errors import TfcompressError

CLUSTER_TYPES = ("Dense", "Conv1D", "Conv2D", "Embedding")


def supported_layers(model) -> list[str]:
    """Names of the top-level layers TF-MOT's default 8-bit scheme can quantize."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry,
    )

    reg = registry.Default8BitQuantizeRegistry()
    return [layer.name for layer in model.layers if reg.supports(layer)]


def tfmot_quantize(model, include: list[str] | None = None):
    """A QAT copy of a functional/sequential tf.keras ``model``: the supported layers (or
    those of them named in ``include``) get TF-MOT fake quantization; the rest stay float and
    are listed with the reason in ``result.tfmot_skipped`` (e.g. MultiHeadAttention,
    LayerNormalization of a transformer; ``x + h`` and ``tf.range`` TFOpLambda layers
    have no weights and are kept as they are)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    require_tf_keras(model, native_hint="tfcompress.quantize.qat")
    supported = supported_layers(model)
    if include is not None:
        unknown = [n for n in include if n not in supported]
        if unknown:
            raise TfcompressError(
                f"include names layers TF-MOT cannot quantize or that do not exist: {unknown}; "
                f"supported here: {supported}"
            )
    chosen = set(supported if include is None else include)
    if not chosen:
        raise TfcompressError(f"model {model.name!r} has no layer TF-MOT can quantize")
    qk = tfmot.quantization.keras

    def annotate(layer):
        return qk.quantize_annotate_layer(layer) if layer.name in chosen else layer

    annotated = tf_keras.models.clone_model(_copy(model), clone_function=annotate)
    with qk.quantize_scope():
        result = qk.quantize_apply(annotated)
    result.tfmot_skipped = _skipped(model, chosen, "TF-MOT's default 8-bit registry")
    return result


def _skipped(model, chosen, registry: str) -> dict[str, str]:
    """``{layer name: why it stays float}`` for the layers with weights not in ``chosen``."""
    return {layer.name: f"{type(layer).__name__}: not in {registry}; stays float"
            for layer in model.layers if layer.weights and layer.name not in chosen}


def _copy(model):
    """An independent copy (TF-MOT's clone functions reuse the layers they are given)."""
    import tf_keras

    copy = tf_keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def tfmot_cluster(model, clusters: int = 16):
    """A copy of tf.keras ``model`` whose Dense/Conv/Embedding weights are TF-MOT k-means
    clustered (fine-tune it, then `tfmot_strip_clustering`); the other layers with weights
    are listed in ``result.tfmot_skipped``."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    require_tf_keras(model, native_hint="tfcompress.quantize.quantize(scheme='kmeans')")
    if not 2 <= clusters <= 256:
        raise TfcompressError(f"clusters must be from 2 to 256, got {clusters}")
    ck = tfmot.clustering.keras

    def cluster(layer):
        if type(layer).__name__ not in CLUSTER_TYPES:
            return layer
        return ck.cluster_weights(
            layer, number_of_clusters=clusters,
            cluster_centroids_init=ck.CentroidInitialization.KMEANS_PLUS_PLUS)

    result = tf_keras.models.clone_model(_copy(model), clone_function=cluster)
    chosen = {la.name for la in model.layers if type(la).__name__ in CLUSTER_TYPES}
    result.tfmot_skipped = _skipped(model, chosen, f"the clustered types {CLUSTER_TYPES}")
    return result


def tfmot_strip_clustering(model):
    """The clustered model with wrappers removed (weights keep only ``clusters`` values)."""
    import tensorflow_model_optimization as tfmot

    return tfmot.clustering.keras.strip_clustering(model)
