"""Low-rank factorization: (activation-aware) SVD, CP and Tucker of Keras layer kernels.

Example:
    >>> from tfcompress.lowrank import SVDLLMConfig, factorize
    >>> small = factorize(model, SVDLLMConfig(target_ratio=0.6), calibration=token_windows)
"""

from tfcompress.lowrank.config import (
    DEFAULT_METHOD,
    ASVDConfig,
    CPConfig,
    FactorizeConfig,
    SVDConfig,
    SVDLLMConfig,
)
from tfcompress.lowrank.factorize import LayerPlan, factorization_table, factorize
from tfcompress.lowrank.layers import CPEinsumDense, LowRankDense

__all__ = [
    "DEFAULT_METHOD",
    "ASVDConfig",
    "CPConfig",
    "CPEinsumDense",
    "FactorizeConfig",
    "LayerPlan",
    "LowRankDense",
    "SVDConfig",
    "SVDLLMConfig",
    "factorization_table",
    "factorize",
]
