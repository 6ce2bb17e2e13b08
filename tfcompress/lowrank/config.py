"""`FactorizeConfig`: which layers to factorize, how, and at what rank."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tfcompress.errors import TfcompressError
from tfcompress.lowrank.svd import MATRIX_METHODS, check_fraction

METHODS = (*MATRIX_METHODS, "cp")
CONV_METHODS = ("tucker", "cp", "svd")
ALLOCATIONS = ("uniform", "sensitivity")
BUDGETS = {"rank", "energy", "target_ratio"}
SUPPORTED_TYPES = ("Dense", "EinsumDense", "Embedding", "Conv1D", "Conv2D")


@dataclass(frozen=True)
class FactorizeConfig:
    """How `factorize` replaces kernels by low-rank products.

    Give exactly one of ``rank`` (fixed), ``energy`` (fraction of singular-value energy kept
    per layer, in (0, 1]) or ``target_ratio`` (factor weights / dense weights over all chosen
    layers, in (0, 1)). ``allocation="sensitivity"`` spreads a ``target_ratio`` budget over
    layers by measured sensitivity instead of the same ratio everywhere.
    ``blocks`` names the repeated blocks the calibration walks (None: found; a regex or
    layer names, see `tfcompress.core.find_blocks`).

    ``method`` applies to Dense/EinsumDense kernels: ``"svd"`` (plain), ``"asvd"`` (scaled by
    activation magnitude), ``"svd-llm"`` (whitened by the input covariance) or ``"cp"`` (CP
    of 3-way EinsumDense kernels such as attention projections; matrices fall back to
    ``"svd"``). ``conv_method`` applies to Conv1D/Conv2D kernels. Embeddings use plain SVD.

    Example:
        >>> FactorizeConfig(method="svd-llm", target_ratio=0.6, include="mlp|attn")
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
        chosen = [k for k in ("rank", "energy", "target_ratio") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise TfcompressError(
                "give exactly one of rank, energy or target_ratio, got "
                f"{', '.join(chosen) if chosen else 'none'}")
        _one_of(self.method, METHODS, "method")
        _one_of(self.conv_method, CONV_METHODS, "conv_method")
        _one_of(self.allocation, ALLOCATIONS, "allocation")
        for t in self.types:
            _one_of(t, SUPPORTED_TYPES, "types entry")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(
                self.rank, int) or self.rank < 1):
            raise TfcompressError(f"rank must be a positive integer, got {self.rank!r}")
        if self.energy is not None:
            check_fraction(self.energy, "energy", closed=True)
            if self.method == "cp" or (
                    self.conv_method != "svd" and any(t.startswith("Conv") for t in self.types)):
                raise TfcompressError("energy applies to SVD methods only; use rank or "
                                      "target_ratio with method='cp' or conv_method='tucker'/'cp'")
        if self.target_ratio is not None:
            check_fraction(self.target_ratio, "target_ratio", closed=False)
        if self.allocation == "sensitivity" and self.target_ratio is None:
            raise TfcompressError("allocation='sensitivity' needs target_ratio (the budget)")
        if self.damping <= 0 or self.alpha <= 0 or self.max_rows < 1:
            raise TfcompressError(
                f"damping, alpha and max_rows must be positive, got {self.damping}, "
                f"{self.alpha}, {self.max_rows}")
        for key in ("types", "include", "exclude", "blocks"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))

    @property
    def aware(self) -> bool:
        """Whether the method needs calibration inputs."""
        return self.method in ("asvd", "svd-llm") or self.allocation == "sensitivity"

    def get_config(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> FactorizeConfig:
        return cls(**config)

    @classmethod
    def merge(cls, config: FactorizeConfig | None, overrides: dict) -> FactorizeConfig:
        """``config`` with ``overrides`` replacing its fields; a budget (``rank``, ``energy``
        or ``target_ratio``) in ``overrides`` replaces the config's budget."""
        if config is None:
            return cls(**overrides)
        if not isinstance(config, cls):
            raise TfcompressError(f"config must be a FactorizeConfig, got {type(config).__name__}")
        fields = config.get_config()
        if BUDGETS & set(overrides):
            fields.update(dict.fromkeys(BUDGETS))
        return cls.from_config({**fields, **overrides})


def _one_of(value, options, arg: str) -> None:
    if value not in options:
        raise TfcompressError(f"{arg} must be one of {list(options)}, got {value!r}")
