"""Configs of `factorize`, one per method (`SVDConfig`, `ASVDConfig`, `SVDLLMConfig`,
`CPConfig`): which layers to factorize and at what rank. Each is registered with its handler
in `tfcompress.lowrank.factorize`, each with its own fields and checks. `FactorizeConfig` is
the old all-methods form (deprecated), read as its method's config.

Example:
    >>> config = SVDLLMConfig(target_ratio=0.6, include="mlp|attn")
    >>> SVDLLMConfig.from_config(config.get_config()) == config
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from tfcompress.core.registry import MethodConfig, from_legacy
from tfcompress.errors import TfcompressError
from tfcompress.lowrank.svd import MATRIX_METHODS, check_fraction

DEFAULT_METHOD = "svd-llm"  # what the verb runs without a config
METHODS = (*MATRIX_METHODS, "cp")
CONV_METHODS = ("tucker", "cp", "svd")
ALLOCATIONS = ("uniform", "sensitivity")
BUDGETS_ORDER = ("rank", "energy", "target_ratio")
BUDGETS = set(BUDGETS_ORDER)
SUPPORTED_TYPES = ("Dense", "EinsumDense", "Embedding", "Conv1D", "Conv2D")


def _one_of(value, options, arg: str) -> None:
    if value not in options:
        raise TfcompressError(f"{arg} must be one of {list(options)}, got {value!r}")


def _positive(value, arg: str) -> None:
    if value <= 0:
        raise TfcompressError(f"{arg} must be positive, got {value}")


@dataclass(frozen=True, kw_only=True)
class _FactorizeMethodConfig(MethodConfig):
    """Fields every factorize method has: exactly one budget of ``rank`` (fixed), ``energy``
    (fraction of singular-value energy kept per layer, in (0, 1]) or ``target_ratio`` (factor
    weights / dense weights over all chosen layers, in (0, 1)); ``allocation="sensitivity"``
    spreads a ``target_ratio`` budget over layers by measured sensitivity instead of the same
    ratio everywhere; ``conv_method`` for Conv1D/2D kernels (embeddings use plain SVD); the
    calibration walk (``max_rows``, ``blocks``: None finds them, or a regex / layer names,
    see `tfcompress.core.find_blocks`) of the activation-aware methods and sensitivity."""

    verb = "factorize"
    types: tuple[str, ...] | None = ("Dense", "EinsumDense")
    rank: int | None = None
    energy: float | None = None
    target_ratio: float | None = None
    allocation: str = "uniform"
    conv_method: str = "tucker"
    max_rows: int = 8192
    blocks: str | tuple[str, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        chosen = [k for k in BUDGETS_ORDER if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise TfcompressError(
                "give exactly one of rank, energy or target_ratio, got "
                f"{', '.join(chosen) if chosen else 'none'}")
        _one_of(self.conv_method, CONV_METHODS, "conv_method")
        _one_of(self.allocation, ALLOCATIONS, "allocation")
        for t in self.layer_types:
            _one_of(t, SUPPORTED_TYPES, "types entry")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(
                self.rank, int) or self.rank < 1):
            raise TfcompressError(f"rank must be a positive integer, got {self.rank!r}")
        if self.energy is not None:
            check_fraction(self.energy, "energy", closed=True)
            if self.conv_method != "svd" and any(t.startswith("Conv") for t in self.layer_types):
                raise TfcompressError("energy applies to SVD methods only; use rank or "
                                      "target_ratio with method='cp' or conv_method='tucker'/'cp'")
        if self.target_ratio is not None:
            check_fraction(self.target_ratio, "target_ratio", closed=False)
        if self.allocation == "sensitivity" and self.target_ratio is None:
            raise TfcompressError("allocation='sensitivity' needs target_ratio (the budget)")
        _positive(self.max_rows, "max_rows")

    @property
    def layer_types(self) -> tuple[str, ...]:
        """The layer types this config selects."""
        return self.types or _FactorizeMethodConfig.types

    def with_overrides(self, **overrides) -> _FactorizeMethodConfig:
        """A copy with ``overrides``; a budget among them replaces this config's budget."""
        if BUDGETS & set(overrides):
            overrides = {**dict.fromkeys(BUDGETS), **overrides}
        return replace(self, **overrides)


@dataclass(frozen=True, kw_only=True)
class SVDConfig(_FactorizeMethodConfig):
    """Plain truncated SVD (no calibration unless ``allocation="sensitivity"``).

    Example:
        >>> small = factorize(model, SVDConfig(rank=16))
    """

    method = "svd"


@dataclass(frozen=True, kw_only=True)
class ASVDConfig(_FactorizeMethodConfig):
    """SVD of the kernel scaled by activation magnitude: input channel ``j`` by
    ``mean|x_j| ** exponent`` (ASVD's alpha; was ``alpha`` here too).

    Example:
        >>> small = factorize(model, ASVDConfig(target_ratio=0.6, exponent=0.5),
        ...                   calibration=token_windows)
    """

    method = "asvd"
    renamed = {"alpha": "exponent"}
    exponent: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        _positive(self.exponent, "exponent (ASVD's alpha)")


@dataclass(frozen=True, kw_only=True)
class SVDLLMConfig(_FactorizeMethodConfig):
    """SVD-LLM: SVD of the kernel whitened by the input covariance (Cholesky factor, with
    ``damping`` a fraction of its mean diagonal).

    Example:
        >>> small = factorize(model, SVDLLMConfig(target_ratio=0.6), calibration=windows)
    """

    method = "svd-llm"
    damping: float = 1e-3

    def __post_init__(self):
        super().__post_init__()
        _positive(self.damping, "damping")


@dataclass(frozen=True, kw_only=True)
class CPConfig(_FactorizeMethodConfig):
    """CP decomposition of 3-way EinsumDense kernels (attention projections); matrices fall
    back to plain SVD.

    Example:
        >>> small = factorize(model, CPConfig(rank=8, types=("EinsumDense",)))
    """

    method = "cp"

    def __post_init__(self):
        super().__post_init__()
        if self.energy is not None:
            raise TfcompressError("energy applies to SVD methods only; use rank or "
                                  "target_ratio with method='cp' or conv_method='tucker'/'cp'")


@dataclass(frozen=True)
class FactorizeConfig:
    """The old all-methods form of a factorize config (deprecated: give the method's own
    config, e.g. `SVDLLMConfig`; its ``alpha`` is `ASVDConfig`'s ``exponent``).
    `method_config` is the method's config it stands for, which checks the values; settings
    that method does not have are ignored, as they always were.

    Example:
        >>> FactorizeConfig(method="asvd", rank=4, alpha=0.25).method_config()
        ASVDConfig(..., rank=4, ..., exponent=0.25)
    """

    method: str = "svd-llm"
    rank: int | None = None
    energy: float | None = None
    target_ratio: float | None = None
    allocation: str = "uniform"
    types: tuple[str, ...] = ("Dense", "EinsumDense")
    include: str | tuple[str, ...] | None = None
    exclude: str | tuple[str, ...] | None = None
    conv_method: str = "tucker"
    damping: float = 1e-3
    alpha: float = 0.5
    max_rows: int = 8192
    blocks: str | tuple[str, ...] | None = None

    def __post_init__(self):
        for key in ("types", "include", "exclude", "blocks"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        self.method_config()  # every check, before any work

    def method_config(self) -> MethodConfig:
        """The config of ``method`` with the settings it has."""
        return from_legacy("factorize", self.get_config())

    def get_config(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> FactorizeConfig:
        return cls(**config)
