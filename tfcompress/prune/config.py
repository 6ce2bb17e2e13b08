"""Configs of `prune`, one per criterion (`MagnitudeConfig`, `TaylorConfig`, `WandaConfig`,
`SparseGPTConfig`): what to prune, to which pattern, on which schedule. Each is registered with
its handler in `tfcompress.prune.api`; `PruneConfig` is the resolved settings the handlers read
(and the old all-methods form, deprecated as a `prune` argument).

Example:
    >>> cfg = WandaConfig(sparsity=0.5, pattern="2:4", exclude="lm_head")
    >>> WandaConfig.from_config(cfg.get_config()) == cfg
    True
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from tfcompress.core.layers import COMPRESSIBLE_TYPES
from tfcompress.core.registry import MethodConfig
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


@dataclass(frozen=True)
class PruneConfig:
    """The resolved settings of every prune method, which the handlers read (as an argument
    of `prune` the old form, deprecated: give the method's config, e.g. `WandaConfig`).

    - ``method``: ``magnitude`` | ``taylor`` (|w·dL/dw| over data batches) | ``wanda``
      (|W|·||X|| from calibration inputs) | ``sparsegpt`` (Hessian reconstruction).
    - ``pattern``: ``unstructured``, an N:M string such as ``"2:4"`` (N kept of every M
      inputs), or structured ``neurons`` (MLP width) / ``heads`` (attention heads).
    - ``scope``: ``layer`` (each layer reaches ``sparsity``) or ``global`` (one threshold).
    - ``schedule``: a TF-MOT ``ConstantSparsity``/``PolynomialDecay`` (or its config dict)
      to prune during ``fit`` with `UpdatePruning`; None prunes at once (one-shot).
    - ``types`` / ``include`` / ``exclude``: layer selection as in
      `tfcompress.core.layers.select_layers` (default types depend on the method).
    - ``block_size`` / ``damping``: SparseGPT's column block and Hessian damping (fraction of
      the mean diagonal); ``max_rows`` caps calibration rows per layer.
    - ``blocks`` / ``resume_dir``: how Wanda / SparseGPT walk the model block by block (None:
      found; a regex or layer names, see `tfcompress.core.find_blocks`) and a folder to save
      progress in and resume from.
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
        if self.method not in METHODS:
            raise TfcompressError(f"method must be one of {METHODS}, got {self.method!r}")
        check_sparsity(self.sparsity)
        if self.pattern not in ("unstructured", *STRUCTURED):
            parse_nm(self.pattern)
        if self.scope not in ("layer", "global"):
            raise TfcompressError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        unscored = self.pattern != "unstructured" or self.method == "sparsegpt"
        if self.scope == "global" and unscored:
            raise TfcompressError(
                "scope='global' needs pattern='unstructured' and a score-based method "
                f"(magnitude, taylor, wanda), got pattern={self.pattern!r}, method={self.method!r}"
            )
        object.__setattr__(self, "schedule", schedule_to_config(self.schedule))
        if self.schedule is not None:
            schedule_from_config(self.schedule)
            if self.method != "magnitude" or self.pattern in STRUCTURED:
                raise TfcompressError(
                    "a schedule prunes by magnitude during fit: use method='magnitude' with an "
                    f"unstructured or N:M pattern, got method={self.method!r}, "
                    f"pattern={self.pattern!r}"
                )
        if self.pattern in STRUCTURED and self.method not in ("magnitude", "wanda"):
            raise TfcompressError(
                f"structured pattern {self.pattern!r} ranks units by 'magnitude' or 'wanda', "
                f"got method={self.method!r}"
            )
        if self.types is not None:
            object.__setattr__(self, "types", tuple(self.types))
            if self.method in ("wanda", "sparsegpt"):
                bad = [t for t in self.types if t not in ACTIVATION_TYPES]
                if bad:
                    raise TfcompressError(
                        f"types {bad} cannot use method={self.method!r}: activation-aware "
                        f"criteria support {ACTIVATION_TYPES}; prune those by 'magnitude'"
                    )
        if isinstance(self.include, list):
            object.__setattr__(self, "include", tuple(self.include))
        if self.resume_dir is not None:
            object.__setattr__(self, "resume_dir", str(self.resume_dir))
        for key in ("exclude", "blocks"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.block_size < 1:
            raise TfcompressError(f"block_size must be a positive integer, got {self.block_size}")
        if self.damping <= 0:
            raise TfcompressError(f"damping must be > 0, got {self.damping}")

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(n, m)`` for an N:M pattern, else None."""
        return parse_nm(self.pattern) if ":" in self.pattern else None

    @property
    def layer_types(self) -> tuple[str, ...]:
        if self.types is not None:
            return self.types
        return ACTIVATION_TYPES if self.method in ("wanda", "sparsegpt") else COMPRESSIBLE_TYPES

    def selects(self, name: str) -> bool:
        """Whether ``include``/``exclude`` (regex searched, or exact names) keep ``name``."""

        def hit(spec):
            return bool(re.search(spec, name)) if isinstance(spec, str) else name in set(spec)

        return (self.include is None or hit(self.include)) and not (
            self.exclude is not None and hit(self.exclude)
        )

    def build_schedule(self):
        return None if self.schedule is None else schedule_from_config(self.schedule)

    def get_config(self) -> dict:
        out = asdict(self)
        for key in ("types", "include", "exclude", "blocks"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    @classmethod
    def from_config(cls, config: dict) -> PruneConfig:
        return cls(**config)


@dataclass(frozen=True, kw_only=True)
class _PruneMethodConfig(MethodConfig):
    """Fields every prune criterion has: ``sparsity`` (fraction of weights zeroed) and
    ``pattern`` (``unstructured``, an N:M string such as ``"2:4"``, or structured
    ``neurons`` / ``heads`` for the criteria that rank units); checked by `PruneConfig`."""

    verb = "prune"
    sparsity: float = 0.5
    pattern: str = "unstructured"

    def __post_init__(self):
        super().__post_init__()
        self.settings()  # every check of the method's values, before any work

    def settings(self) -> PruneConfig:
        """The resolved settings the handlers read."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "roles"}
        return PruneConfig(method=self.method, **own)


@dataclass(frozen=True, kw_only=True)
class MagnitudeConfig(_PruneMethodConfig):
    """|w| per layer (``scope="layer"``) or under one threshold (``"global"``); with a TF-MOT
    ``schedule`` (or its config dict) the model prunes during ``fit`` with `UpdatePruning`.

    Example:
        >>> pruned = prune(model, MagnitudeConfig(sparsity=0.8, scope="global"))
    """

    method = "magnitude"
    scope: str = "layer"
    schedule: dict | None = None


@dataclass(frozen=True, kw_only=True)
class TaylorConfig(_PruneMethodConfig):
    """|w·dL/dw| over ``(inputs, targets[, weights])`` calibration batches (the verb's
    ``loss``, default next-token cross-entropy).

    Example:
        >>> pruned = prune(model, TaylorConfig(sparsity=0.5), calibration=[(x, y)])
    """

    method = "taylor"
    scope: str = "layer"


@dataclass(frozen=True, kw_only=True)
class WandaConfig(_PruneMethodConfig):
    """|W|·||X|| from calibration inputs, block by block (``blocks``: None finds them, or a
    regex / layer names; ``max_rows`` caps rows per layer; ``resume_dir`` saves progress).

    Example:
        >>> pruned = prune(model, WandaConfig(pattern="2:4"), calibration=token_windows)
    """

    method = "wanda"
    scope: str = "layer"
    max_rows: int | None = 8192
    blocks: str | tuple[str, ...] | None = None
    resume_dir: str | None = None


@dataclass(frozen=True, kw_only=True)
class SparseGPTConfig(_PruneMethodConfig):
    """SparseGPT's Hessian reconstruction from calibration inputs: ``block_size`` columns at a
    time, ``damping`` a fraction of the mean Hessian diagonal; ``max_rows``, ``blocks``,
    ``resume_dir`` as in `WandaConfig`.

    Example:
        >>> pruned = prune(model, SparseGPTConfig(sparsity=0.5), calibration=token_windows)
    """

    method = "sparsegpt"
    block_size: int = 128
    damping: float = 0.01
    max_rows: int | None = 8192
    blocks: str | tuple[str, ...] | None = None
    resume_dir: str | None = None
