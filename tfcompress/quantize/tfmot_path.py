"""TF-MOT path for tf.keras (Keras 2) models: quantization-aware training that annotates only
the layers TF-MOT supports (a transformer's Dense layers quantize, its MultiHeadAttention and
LayerNormalization stay float instead of crashing ``quantize_model``), int8 TFLite, and
TF-MOT k-means weight clustering. int8 TFLite files come from
`tfcompress.export.export_tflite`, which takes tf.keras and QAT models too.

Example:
    >>> qat_model = tfmot_quantize(tf_keras_model)      # then compile + fit as usual
    >>> export_tflite(qat_model, "model.tflite", "int8", 64, representative_data=windows)
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
    those of them named in ``include``) get TF-MOT fake quantization; the rest stay float."""
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
        return qk.quantize_apply(annotated)


def _copy(model):
    """An independent copy (TF-MOT's clone functions reuse the layers they are given)."""
    import tf_keras

    copy = tf_keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def tfmot_cluster(model, clusters: int = 16):
    """A copy of tf.keras ``model`` whose Dense/Conv/Embedding weights are TF-MOT k-means
    clustered (fine-tune it, then `tfmot_strip_clustering`)."""
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

    return tf_keras.models.clone_model(_copy(model), clone_function=cluster)


def tfmot_strip_clustering(model):
    """The clustered model with wrappers removed (weights keep only ``clusters`` values)."""
    import tensorflow_model_optimization as tfmot

    return tfmot.clustering.keras.strip_clustering(model)
