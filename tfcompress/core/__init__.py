"""Shared model plumbing for every method and any Keras 3 model: finding layers and blocks,
copying models, model signatures, calibrating block by block with streamed input statistics,
the shared Hessian math; `register_layer` for layer classes of your own;
`tfcompress.core.replace` / `tfcompress.core.saving` for compressed layers; `MethodConfig` and
`register_handler`: one config class per method, each registered with its handler."""

from tfcompress.core.blocks import BlockPlan, find_blocks
from tfcompress.core.calibration import calibrate, calibration_batches, capture_inputs
from tfcompress.core.layers import (
    COMPRESSIBLE_TYPES,
    copy_model,
    drop_training_state,
    from_matrix,
    input_axes,
    is_keras3_model,
    is_tf_keras_model,
    iter_layers,
    kernel_axes,
    kernel_matrix,
    kernel_of,
    layer_paths,
    matrix_shape,
    register_layer,
    require_keras3,
    require_tf_keras,
    select_layers,
    set_kernel_matrix,
    to_matrix,
    transfer_state,
)
from tfcompress.core.registry import MethodConfig, register_handler
from tfcompress.core.stats import InputStats, hessian, inverse_hessian_factor

__all__ = [
    "BlockPlan",
    "InputStats",
    "MethodConfig",
    "register_handler",
    "register_layer",
    "calibrate",
    "calibration_batches",
    "find_blocks",
    "hessian",
    "inverse_hessian_factor",
    "COMPRESSIBLE_TYPES",
    "to_matrix",
    "kernel_axes",
    "from_matrix",
    "capture_inputs",
    "copy_model",
    "drop_training_state",
    "input_axes",
    "is_keras3_model",
    "is_tf_keras_model",
    "iter_layers",
    "kernel_matrix",
    "kernel_of",
    "matrix_shape",
    "layer_paths",
    "require_keras3",
    "require_tf_keras",
    "select_layers",
    "set_kernel_matrix",
    "transfer_state",
]
