"""Configs of `prune`, one per criterion (`MagnitudeConfig`, `TaylorConfig`, `WandaConfig`,
`SparseGPTConfig`): what to prune, to which pattern, on which schedule. Each is registered with
its handler in `tfcompress.prune.api`, each with its own fields and checks. `PruneConfig` is
the old all-methods form (deprecated), read as its criterion's config.

Example:
    >>> cfg = WandaConfig(sparsity=0.5, pattern="2:4", exclude="lm_head")
    >>> WandaConfig.from_config(cfg.get_config()) == cfg
    True
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import ClassVar

from tfcompress.core.layers import COMPRESSIBLE_TYPES
from tfcompress.core.registry import MethodConfig, from_legacy
from tfcompress.errors import TfcompressError
from tfcompress.prune.masks import check_sparsity, parse_nm

DEFAULT_METHOD = "magnitude"  # what the verb runs without a config
METHODS = ("magnitude", "taylor", "wanda", "sparsegpt")
STRUCTURED = ("neurons", "heads")
# activation-aware criteria read each layer's (rows, d_in) inputs, which only dense layers have
ACTIVATION_TYPES = ("Dense", "EinsumDense")
SCHEDULES = ("ConstantSparsity", "PolynomialDecay")


def schedule_from_config(spec: dict):
    """A TF-MOT pruning schedule from ``{"class_name": ..., "config": {...}}``."""
    from tensorflow_model_optimization.sparsity import keras as tfmot_sparsity

    if not isinstance(spec, dict) or spec.get("class_name") not in SCHEDULES:
        raise TfcompressError(
            f"schedule must be a TF-MOT schedule ({', '.join(SCHEDULES)}) or its "
            f"{{'class_name', 'config'}} dict, got {spec!r}"
        )
    return getattr(tfmot_sparsity, spec["class_name"])(**spec["config"])


def schedule_to_config(schedule) -> dict | None:
    if schedule is None or isinstance(schedule, dict):
        return schedule
    return schedule.get_config()


@dataclass(frozen=True, kw_only=True)
class _PruneMethodConfig(MethodConfig):
    """Fields every prune criterion has: ``sparsity`` (fraction of weights zeroed) and
    ``pattern`` (``unstructured``, an N:M string such as ``"2:4"``, or structured
    ``neurons`` / ``heads`` for the criteria that rank units, ``structured``)."""

    verb = "prune"
    structured: ClassVar[bool] = False  # whether it can rank whole neurons / heads
    activation_aware: ClassVar[bool] = False  # reads layer inputs: dense layers only
    sparsity: float = 0.5
    pattern: str = "unstructured"

    def __post_init__(self):
        super().__post_init__()
        check_sparsity(self.sparsity)
        if self.pattern in STRUCTURED:
            if not self.structured:
                raise TfcompressError(
                    f"structured pattern {self.pattern!r} ranks units by 'magnitude' or "
                    f"'wanda', got method={self.method!r}")
        elif self.pattern != "unstructured":
            parse_nm(self.pattern)
        if self.activation_aware and self.types is not None:
            bad = [t for t in self.types if t not in ACTIVATION_TYPES]
            if bad:
                raise TfcompressError(
                    f"types {bad} cannot use method={self.method!r}: activation-aware "
                    f"criteria support {ACTIVATION_TYPES}; prune those by 'magnitude'")
        if getattr(self, "resume_dir", None) is not None:
            object.__setattr__(self, "resume_dir", str(self.resume_dir))

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(n, m)`` for an N:M pattern, else None."""
        return parse_nm(self.pattern) if ":" in self.pattern else None

    @property
    def layer_types(self) -> tuple[str, ...]:
        """The layer types this config selects (``types``, else the criterion's own)."""
        if self.types is not None:
            return self.types
        return ACTIVATION_TYPES if self.activation_aware else COMPRESSIBLE_TYPES

    def selects(self, name: str) -> bool:
        """Whether ``include``/``exclude`` (regex searched, or exact names) keep ``name``."""

        def hit(spec):
            return bool(re.search(spec, name)) if isinstance(spec, str) else name in set(spec)

        return (self.include is None or hit(self.include)) and not (
            self.exclude is not None and hit(self.exclude)
        )

    def build_schedule(self):
        """The TF-MOT schedule to prune on during ``fit`` (None: at once)."""
        return None


def _check_scope(config) -> None:
    """``scope`` is ``layer`` or ``global``; one global threshold ranks unstructured scores."""
    if config.scope not in ("layer", "global"):
        raise TfcompressError(f"scope must be 'layer' or 'global', got {config.scope!r}")
    if config.scope == "global" and config.pattern != "unstructured":
        raise TfcompressError(
            "scope='global' needs pattern='unstructured' and a score-based method "
            f"(magnitude, taylor, wanda), got pattern={config.pattern!r}, "
            f"method={config.method!r}")


@dataclass(frozen=True, kw_only=True)
class MagnitudeConfig(_PruneMethodConfig):
    """|w| per layer (``scope="layer"``) or under one threshold (``"global"``); with a TF-MOT
    ``schedule`` (or its config dict) the model prunes during ``fit`` with `UpdatePruning`.

    Example:
        >>> pruned = prune(model, MagnitudeConfig(sparsity=0.8, scope="global"))
    """

    method = "magnitude"
    structured = True
    scope: str = "layer"
    schedule: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        _check_scope(self)
        object.__setattr__(self, "schedule", schedule_to_config(self.schedule))
        if self.schedule is not None:
            schedule_from_config(self.schedule)
            if self.pattern in STRUCTURED:
                raise TfcompressError(
                    "a schedule prunes by magnitude during fit: use an unstructured or N:M "
                    f"pattern, got pattern={self.pattern!r}")

    def build_schedule(self):
        return None if self.schedule is None else schedule_from_config(self.schedule)


@dataclass(frozen=True, kw_only=True)
class TaylorConfig(_PruneMethodConfig):
    """|w·dL/dw| over ``(inputs, targets[, weights])`` calibration batches (the verb's
    ``loss``, default next-token cross-entropy).

    Example:
        >>> pruned = prune(model, TaylorConfig(sparsity=0.5), calibration=[(x, y)])
    """

    method = "taylor"
    scope: str = "layer"

    def __post_init__(self):
        super().__post_init__()
        _check_scope(self)


@dataclass(frozen=True, kw_only=True)
class WandaConfig(_PruneMethodConfig):
    """|W|·||X|| from calibration inputs, block by block (``blocks``: None finds them, or a
    regex / layer names; ``max_rows`` caps rows per layer; ``resume_dir`` saves progress).

    Example:
        >>> pruned = prune(model, WandaConfig(pattern="2:4"), calibration=token_windows)
    """

    method = "wanda"
    structured = True
    activation_aware = True
    scope: str = "layer"
    max_rows: int | None = 8192
    blocks: str | tuple[str, ...] | None = None
    resume_dir: str | None = None

    def __post_init__(self):
        super().__post_init__()
        _check_scope(self)


@dataclass(frozen=True, kw_only=True)
class SparseGPTConfig(_PruneMethodConfig):
    """SparseGPT's Hessian reconstruction from calibration inputs: ``block_size`` columns at a
    time, ``damping`` a fraction of the mean Hessian diagonal; ``layerwise=True``: inside
    each block too, a layer's inputs come from the layers pruned before it (q/k/v, then the
    attention output, gate/up, down: SmolLM2-135M 50 % 1.729 -> 1.695x the float perplexity,
    for about a quarter more calibration time and 0.15-0.25 GB more peak memory; False: all
    from the block's dense run, as llm-compressor does); ``max_rows``, ``blocks``,
    ``resume_dir`` as in `WandaConfig`.

    Example:
        >>> pruned = prune(model, SparseGPTConfig(sparsity=0.5), calibration=token_windows)
    """

    method = "sparsegpt"
    activation_aware = True
    block_size: int = 128
    damping: float = 0.01
    layerwise: bool = False
    max_rows: int | None = 8192
    blocks: str | tuple[str, ...] | None = None
    resume_dir: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.block_size < 1:
            raise TfcompressError(f"block_size must be a positive integer, got {self.block_size}")
        if self.damping <= 0:
            raise TfcompressError(f"damping must be > 0, got {self.damping}")
        if not isinstance(self.layerwise, bool):
            raise TfcompressError(f"layerwise must be True or False, got {self.layerwise!r}")


@dataclass(frozen=True)
class PruneConfig:
    """The old all-methods form of a prune config (deprecated: give the criterion's own
    config, e.g. `WandaConfig`). `method_config` is the criterion's config it stands for,
    which checks the values; a ``schedule`` or ``scope="global"`` that criterion cannot take
    is refused, the other settings it does not have are ignored, as they always were.
    """

    method: str = "magnitude"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    scope: str = "layer"
    schedule: dict | None = None
    types: tuple[str, ...] | None = None
    include: str | tuple[str, ...] | None = None
    exclude: str | tuple[str, ...] | None = None
    block_size: int = 128
    damping: float = 0.01
    max_rows: int | None = 8192
    blocks: str | tuple[str, ...] | None = None
    resume_dir: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "schedule", schedule_to_config(self.schedule))
        config = self.method_config()  # every check, before any work
        if self.schedule is not None and not isinstance(config, MagnitudeConfig):
            raise TfcompressError("a schedule prunes by magnitude during fit: use "
                                  f"method='magnitude', got method={self.method!r}")
        if self.scope == "global" and not hasattr(config, "scope"):
            raise TfcompressError("scope='global' needs pattern='unstructured' and a "
                                  "score-based method (magnitude, taylor, wanda), got "
                                  f"method={self.method!r}")

    def method_config(self) -> MethodConfig:
        """The config of ``method`` with the settings it has."""
        return from_legacy("prune", self.get_config())

    def get_config(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> PruneConfig:
        return cls(**config)
