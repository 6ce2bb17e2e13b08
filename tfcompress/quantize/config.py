"""Configs of `quantize`: one per method (`RTNConfig`, `GPTQConfig`, Keras's own modes as
`KerasInt8Config` / `KerasInt4Config` / `KerasGPTQConfig`), each registered with its handler in
`tfcompress.quantize.api`, each with its own fields and checks. `QuantizeConfig` is the old
all-methods form (deprecated), read as its method's config.

Example:
    >>> config = GPTQConfig(bits=4, granularity="group", group_size=128, act_order=True)
    >>> GPTQConfig.from_config(config.get_config()) == config
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tfcompress.core.registry import MethodConfig, from_legacy
from tfcompress.errors import TfcompressError
from tfcompress.quantize.quantizers import Quantizer, validate

DEFAULT_METHOD = "rtn"  # what the verb runs without a config
METHODS = ("rtn", "gptq", "keras_int8", "keras_int4", "keras_gptq")
TYPES = ("Dense", "EinsumDense", "Embedding")


@dataclass(frozen=True, kw_only=True)
class _QuantizeMethodConfig(MethodConfig):
    """Fields every quantize method has: ``types`` (None: every type in `TYPES`)."""

    verb = "quantize"
    types: tuple[str, ...] | None = TYPES

    def __post_init__(self):
        super().__post_init__()
        bad = [t for t in self.layer_types if t not in TYPES]
        if bad:
            raise TfcompressError(f"types {bad} cannot be quantized: choose from {TYPES}")

    @property
    def layer_types(self) -> tuple[str, ...]:
        """The layer types this config selects."""
        return self.types or TYPES


@dataclass(frozen=True, kw_only=True)
class _GridConfig(_QuantizeMethodConfig):
    """A `Quantizer` grid: ``scheme`` (see `SCHEMES`), ``bits``, ``granularity`` (tensor,
    channel or group) with ``group_size``; ``layer_bits`` maps layer paths to bit widths that
    replace ``bits`` (mixed precision, e.g. from `allocate_bits`); ``ragged`` lets a
    ``group_size`` that does not divide a layer's input axis end it with a shorter group."""

    scheme: str = "affine"
    bits: int = 8
    granularity: str = "channel"
    group_size: int | None = None
    layer_bits: dict = field(default_factory=dict)
    ragged: bool = False

    def __post_init__(self):
        super().__post_init__()
        for bits in {self.bits, *self.layer_bits.values()}:
            validate(self.scheme, bits, self.granularity, self.group_size)

    @classmethod
    def litert_int4(cls, **fields):
        """LiteRT's int4 grid: ``scheme="litert"``, 4 bits, groups of 32 input rows (the
        blockwise int4 of ``export_llm(mode="int4")``, which then copies the codes and scales
        exactly instead of re-rounding them). ``fields`` set the other options.

        Example:
            >>> q = quantize(model, GPTQConfig.litert_int4(types=("Dense",)), calibration=w)
            >>> export_llm(q, "bundle/", mode="int4")   # the same weights, bit for bit
        """
        return cls(**{"scheme": "litert", "bits": 4, "granularity": "group",
                      "group_size": 32, **fields})

    def quantizer(self, path: str = "") -> Quantizer:
        """The quantizer for the layer at ``path`` (its ``layer_bits`` entry, else ``bits``)."""
        return Quantizer(self.scheme, int(self.layer_bits.get(path, self.bits)),
                         self.granularity, self.group_size, ragged=self.ragged)


@dataclass(frozen=True, kw_only=True)
class RTNConfig(_GridConfig):
    """Round-to-nearest onto the grid, no calibration.

    Example:
        >>> q = quantize(model, RTNConfig(bits=4, granularity="group", group_size=32))
    """

    method = "rtn"


@dataclass(frozen=True, kw_only=True)
class GPTQConfig(_GridConfig):
    """GPTQ (error-compensating, from calibration inputs) onto the grid. ``damping``: fraction
    of the mean Hessian diagonal; ``act_order``: columns by decreasing Hessian diagonal;
    ``sequential``: each block's inputs come from the model quantized so far (False: all from
    the float model); ``max_rows``: calibration rows per layer; ``blocks``: the repeated
    blocks (None finds them, or a regex / layer names, see `tfcompress.core.find_blocks`);
    ``resume_dir``: a folder to save progress in and resume from. Embeddings round to nearest.

    Example:
        >>> q = quantize(model, GPTQConfig(bits=4, granularity="group", group_size=128),
        ...              calibration=token_windows)
    """

    method = "gptq"
    damping: float = 0.01
    act_order: bool = False
    sequential: bool = True
    max_rows: int | None = 8192
    blocks: str | tuple[str, ...] | None = None
    resume_dir: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.damping <= 1:
            raise TfcompressError(f"damping must be in [0, 1], got {self.damping}")
        if self.resume_dir is not None:
            object.__setattr__(self, "resume_dir", str(self.resume_dir))


@dataclass(frozen=True, kw_only=True)
class KerasInt8Config(_QuantizeMethodConfig):
    """Keras's own ``model.quantize("int8")`` (for comparison).

    Example:
        >>> q = quantize(model, KerasInt8Config(types=("Dense",)))
    """

    method = "keras_int8"


@dataclass(frozen=True, kw_only=True)
class KerasInt4Config(_QuantizeMethodConfig):
    """Keras's own int4 mode; ``granularity="group"`` with ``group_size`` is its block size.

    Example:
        >>> q = quantize(model, KerasInt4Config(granularity="group", group_size=32))
    """

    method = "keras_int4"
    granularity: str = "channel"
    group_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class KerasGPTQConfig(_QuantizeMethodConfig):
    """Keras's own GPTQ (``keras.quantizers.GPTQConfig``) from calibration windows.

    Example:
        >>> q = quantize(model, KerasGPTQConfig(bits=4), calibration=token_windows)
    """

    method = "keras_gptq"
    scheme: str = "affine"
    bits: int = 8
    granularity: str = "channel"
    group_size: int | None = None
    damping: float = 0.01
    act_order: bool = False


@dataclass(frozen=True)
class QuantizeConfig:
    """The old all-methods form of a quantize config (deprecated: give the method's own
    config, e.g. `GPTQConfig`). `method_config` is the method's config it stands for, which
    checks the values; settings that method does not have are ignored, as they always were.
    """

    method: str = "rtn"
    scheme: str = "affine"
    bits: int = 8
    granularity: str = "channel"
    group_size: int | None = None
    types: tuple[str, ...] = TYPES
    include: str | tuple[str, ...] | None = None
    exclude: str | tuple[str, ...] | None = None
    layer_bits: dict = field(default_factory=dict)
    damping: float = 0.01
    act_order: bool = False
    sequential: bool = True
    max_rows: int | None = 8192
    ragged: bool = False
    blocks: str | tuple[str, ...] | None = None
    resume_dir: str | None = None

    def __post_init__(self):
        self.method_config()  # every check, before any work

    @classmethod
    def litert_int4(cls, method: str = "gptq", **fields) -> QuantizeConfig:
        """LiteRT's int4 grid for ``method`` (deprecated form of
        ``GPTQConfig.litert_int4(...)`` / ``RTNConfig.litert_int4(...)``)."""
        return cls(method=method, **{"scheme": "litert", "bits": 4, "granularity": "group",
                                     "group_size": 32, **fields})

    def method_config(self) -> MethodConfig:
        """The config of ``method`` with the settings it has."""
        return from_legacy("quantize", self.get_config())

    def quantizer(self, path: str = "") -> Quantizer:
        """The quantizer for the layer at ``path`` (see `GPTQConfig.quantizer`)."""
        return self.method_config().quantizer(path)

    def get_config(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> QuantizeConfig:
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        return cls(**config)
