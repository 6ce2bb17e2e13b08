"""Shared model plumbing for every method: finding layers, copying models, capturing inputs."""

from tfcompress.core.layers import (
    COMPRESSIBLE_TYPES,
    capture_inputs,
    copy_model,
    input_axes,
    is_keras3_model,
    is_tf_keras_model,
    iter_layers,
    kernel_matrix,
    kernel_of,
    layer_path,
    matrix_shape,
    require_keras3,
    require_tf_keras,
    select_layers,
    set_kernel_matrix,
)

__all__ = [
    "COMPRESSIBLE_TYPES",
    "capture_inputs",
    "copy_model",
    "input_axes",
    "is_keras3_model",
    "is_tf_keras_model",
    "iter_layers",
    "kernel_matrix",
    "kernel_of",
    "matrix_shape",
    "layer_path",
    "require_keras3",
    "require_tf_keras",
    "select_layers",
    "set_kernel_matrix",
]
