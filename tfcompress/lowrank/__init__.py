"""Low-rank factorization: (activation-aware) SVD, CP and Tucker of Keras layer kernels. The
package is callable as its verb: ``tfcompress.lowrank(...)`` is `factorize`.

Example:
    >>> from tfcompress.lowrank import SVDLLMConfig, factorize
    >>> small = factorize(model, SVDLLMConfig(target_ratio=0.6), calibration=token_windows)
"""

from tfcompress.core.modules import make_callable
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

make_callable(__name__, factorize)

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
