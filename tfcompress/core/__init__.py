"""Shared model plumbing for every method: finding layers and blocks, copying models,
calibrating block by block with streamed input statistics, the shared Hessian math."""

from tfcompress.core.blocks import BlockPlan, find_blocks
from tfcompress.core.calibration import calibrate, calibration_batches
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
from tfcompress.core.stats import InputStats, hessian, inverse_hessian_factor

__all__ = [
    "BlockPlan",
    "InputStats",
    "calibrate",
    "calibration_batches",
    "find_blocks",
    "hessian",
    "inverse_hessian_factor",
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
