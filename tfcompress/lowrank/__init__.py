"""Low-rank factorization: (activation-aware) SVD, CP and Tucker of Keras layer kernels.

Example:
    >>> from tfcompress.lowrank import FactorizeConfig, factorize
    >>> small = factorize(model, FactorizeConfig(method="svd-llm", target_ratio=0.6),
    ...                   calibration=token_windows)
"""

from tfcompress.lowrank.config import FactorizeConfig
from tfcompress.lowrank.factorize import LayerPlan, factorization_table, factorize
from tfcompress.lowrank.layers import CPEinsumDense, LowRankDense

__all__ = [
    "CPEinsumDense",
    "FactorizeConfig",
    "LayerPlan",
    "LowRankDense",
    "factorization_table",
    "factorize",
]
