"""Quantization: quantizers (linear and non-linear), post-training weight quantization
(round-to-nearest, GPTQ, Keras's own modes) with compact storage, mixed precision, and
quantization-aware training for Keras 3, activation smoothing (`smooth`) for
full-integer export, and residual-stream rotation (`rotate`) against outliers.

Each method has its config (`RTNConfig`, `GPTQConfig`, `KerasInt8Config`, `KerasInt4Config`,
`KerasGPTQConfig`); the config's class picks what `quantize` runs.

Example:
    >>> from tfcompress.quantize import GPTQConfig, quantize
    >>> int4 = quantize(model, GPTQConfig(bits=4, granularity="group", group_size=128),
    ...                 calibration=windows)
"""

from tfcompress.core.modules import make_callable
from tfcompress.core.stats import hessian
from tfcompress.quantize.api import quantize
from tfcompress.quantize.config import (
    DEFAULT_METHOD,
    METHODS,
    GPTQConfig,
    KerasGPTQConfig,
    KerasInt4Config,
    KerasInt8Config,
    QuantizeConfig,
    RTNConfig,
)
from tfcompress.quantize.gptq import gptq, output_error
from tfcompress.quantize.mixed import allocate_bits, sensitivity
from tfcompress.quantize.packing import pack_int4, unpack_int4_np
from tfcompress.quantize.qat import fake_quantize, qat, strip_qat
from tfcompress.quantize.quantizers import (
    SCHEMES,
    QTensor,
    Quantizer,
    affine_codes,
    kmeans_1d,
    log2_levels,
    nf4_levels,
)
from tfcompress.quantize.rotate import hadamard, rotate, rotation_matrix
from tfcompress.quantize.smooth import smooth, smoothing_groups, smoothing_scales
from tfcompress.quantize.storage import cache_decoded, is_quantized
from tfcompress.quantize.tfmot_path import tfmot_cluster, tfmot_quantize, tfmot_strip_clustering

make_callable(__name__, quantize)

__all__ = [
    "DEFAULT_METHOD",
    "GPTQConfig",
    "KerasGPTQConfig",
    "KerasInt4Config",
    "KerasInt8Config",
    "METHODS",
    "RTNConfig",
    "SCHEMES",
    "QTensor",
    "QuantizeConfig",
    "Quantizer",
    "affine_codes",
    "allocate_bits",
    "cache_decoded",
    "fake_quantize",
    "gptq",
    "hadamard",
    "hessian",
    "is_quantized",
    "kmeans_1d",
    "log2_levels",
    "nf4_levels",
    "output_error",
    "pack_int4",
    "qat",
    "quantize",
    "rotate",
    "rotation_matrix",
    "sensitivity",
    "smooth",
    "smoothing_groups",
    "smoothing_scales",
    "strip_qat",
    "tfmot_cluster",
    "tfmot_quantize",
    "tfmot_strip_clustering",
    "unpack_int4_np",
]
