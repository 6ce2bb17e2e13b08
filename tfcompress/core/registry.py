"""One config class per method, registered with the handler that applies it.

Each algorithm has a frozen dataclass of its own settings (``GPTQConfig``, ``WandaConfig``,
``SVDLLMConfig``...) deriving from `MethodConfig`, whose fields are the one layer filter all
methods share (``types``, ``include``, ``exclude``, ``roles``). A handler registered for the
class (`register_handler`) is what a verb runs for it, so ``quantize(model, GPTQConfig(...))``
dispatches on the config's class, not on a method string, and a user's own method joins by
registering its config and handler. A config's fields are also the recipe keys of its stage.

Example:
    >>> @dataclass(frozen=True, kw_only=True)
    ... class ScaleConfig(MethodConfig):
    ...     verb = "quantize"     # class variables, not fields
    ...     method = "scale"
    ...     factor: float = 0.5
    >>> @register_handler(ScaleConfig)
    ... def scale(model, config, calibration=None, *, inplace=False, verbose=1):
    ...     ...
    >>> tfcompress.quantize.quantize(model, ScaleConfig(factor=0.25))   # runs scale
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

from tfcompress.core.roles import ROLES, block_kernel_paths, close_names
from tfcompress.errors import TfcompressError

# (verb, method name) -> config class; config class -> handler
_CLASSES: dict[tuple[str, str], type] = {}
_HANDLERS: dict[type, Callable] = {}


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Settings of one method, with the layer filter every method shares.

    ``types``: layer class names to take (None: the method's own default); ``include`` /
    ``exclude``: a regex searched in layer paths, or a list of exact paths or names (see
    `tfcompress.core.select_layers`); ``roles``: ``"all"`` (every layer ``types`` allow) or
    ``"blocks"`` (the attention and MLP kernels of each repeated block, found from the graph:
    `tfcompress.core.roles.block_kernel_paths`; not together with ``include``). Subclasses set
    ``verb`` and ``method`` (the name recipes use) as class variables.
    """

    verb: ClassVar[str] = ""
    method: ClassVar[str] = ""
    renamed: ClassVar[dict[str, str]] = {}  # a setting's old name -> its name here
    types: tuple[str, ...] | None = None
    include: str | tuple[str, ...] | None = None
    exclude: str | tuple[str, ...] | None = None
    roles: str = "all"

    def __post_init__(self):
        for f in fields(self):  # lists (from YAML/JSON) become tuples: configs stay hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        if self.roles not in ROLES:
            raise TfcompressError(f"roles must be one of {list(ROLES)}, got {self.roles!r}")
        if self.roles == "blocks" and self.include is not None:
            raise TfcompressError("give roles='blocks' or include (names or a regex), not both")

    def get_config(self) -> dict:
        """JSON-ready settings with ``method``; `from_config` reads them back."""
        return {"method": self.method, **{k: list(v) if isinstance(v, tuple) else v
                                          for k, v in asdict(self).items()}}

    @classmethod
    def from_config(cls, config: dict) -> MethodConfig:
        """The config of `get_config`'s dict (``method``, if given, must be this class's);
        an unknown key is refused with the closest field."""
        config = dict(config)
        method = config.pop("method", cls.method)
        if method != cls.method:
            raise TfcompressError(f"{cls.__name__} is method {cls.method!r}, got method="
                                  f"{method!r}")
        problem = unknown_keys(cls, config)
        if problem:
            raise TfcompressError(problem)
        return cls(**config)

    def with_overrides(self, **overrides) -> MethodConfig:
        """A copy with ``overrides`` replacing fields (a verb's keyword overrides)."""
        return replace(self, **overrides)

    def for_model(self, model) -> MethodConfig:
        """This config with ``roles="blocks"`` made concrete for ``model`` (``include`` set to
        its block kernels; a model without repeated blocks keeps every layer)."""
        if self.roles != "blocks":
            return self
        return replace(self, roles="all", include=tuple(block_kernel_paths(model)) or None)


def register_handler(config_cls: type) -> Callable[[Callable], Callable]:
    """Decorator: the handler that applies ``config_cls`` (a `MethodConfig` subclass with
    ``verb`` and ``method`` set). A handler takes ``(model, config, calibration, *, inplace,
    verbose)`` plus the verb's own keywords and returns the compressed model."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)
            and config_cls.verb and config_cls.method):
        raise TfcompressError(f"register_handler takes a MethodConfig subclass with verb and "
                              f"method set, got {config_cls!r}")
    key = (config_cls.verb, config_cls.method)
    if _CLASSES.get(key, config_cls) is not config_cls:
        raise TfcompressError(f"{config_cls.verb} method {config_cls.method!r} is already "
                              f"registered by {_CLASSES[key].__name__}; choose another name")

    def register(handler: Callable) -> Callable:
        _CLASSES[key] = config_cls
        _HANDLERS[config_cls] = handler
        return handler

    return register


def method_names(verb: str) -> list[str]:
    """The registered method names of ``verb``."""
    return sorted(m for v, m in _CLASSES if v == verb)


def config_class(verb: str, method: str) -> type:
    """The config class registered for ``verb``'s ``method`` (its recipe name)."""
    if (verb, method) not in _CLASSES:
        names = method_names(verb)
        close = close_names(str(method), names, n=1)
        raise TfcompressError(f"method must be one of {names}, got {method!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else ""))
    return _CLASSES[(verb, method)]


def handler_for(verb: str, config: MethodConfig) -> Callable:
    """The handler registered for ``config``'s class (or its closest registered base)."""
    for cls in type(config).__mro__:
        if cls in _HANDLERS:
            if cls.verb != verb:
                raise TfcompressError(f"config {type(config).__name__} configures {cls.verb}, "
                                      f"not {verb}")
            return _HANDLERS[cls]
    raise TfcompressError(f"config {type(config).__name__} has no registered handler: "
                          "decorate one with tfcompress.core.register_handler")


def unknown_keys(cls: type, keys) -> str | None:
    """The error text for keys ``cls`` has no field for (each with its closest field), or
    None when all are fields."""
    names = [f.name for f in fields(cls)]
    bad = [k for k in keys if k not in names]
    if not bad:
        return None
    hints = [f"{k!r}" + (f" (did you mean {c[0]!r}?)" if (c := close_names(str(k), names, n=1))
                         else "") for k in bad]
    return (f"{cls.__name__} has no setting {', '.join(hints)} (valid: "
            f"{', '.join(sorted(names))})")


def resolve_config(verb: str, config, overrides: dict, default: str,
                   legacy: type | None = None) -> MethodConfig:
    """The `MethodConfig` a verb runs: ``config`` (None: ``default``'s class) with keyword
    ``overrides`` applied (`MethodConfig.with_overrides`).

    The old forms, a ``method="..."`` keyword, the old all-methods config class (``legacy``)
    and a setting's old name (a class's ``renamed``), still work for one release with a
    `DeprecationWarning` naming the new form.
    """
    old = legacy is not None and isinstance(config, legacy)
    if not (config is None or old or isinstance(config, MethodConfig)):
        raise TfcompressError(f"config must be a config of a {verb} method (e.g. "
                              f"{config_class(verb, default).__name__}), got "
                              f"{type(config).__name__}")
    overrides = dict(overrides)
    method = overrides.pop("method", None)
    settings = config.get_config() if config is not None else {}
    cls = (type(config) if isinstance(config, MethodConfig) and method is None
           else config_class(verb, method or settings.get("method", default)))
    if old or method is not None:
        given = f"{type(config).__name__}(method=...)" if old else "method=..."
        _deprecated(f"{verb}(model, {given})", f"{verb}(model, {cls.__name__}(...))")
        if legacy is not None:  # settings of the old class this method ignored stay ignored
            ignored = {f.name for f in fields(legacy)} - {f.name for f in fields(cls)}
            overrides = {k: v for k, v in overrides.items()
                         if k not in ignored or k in cls.renamed}
    overrides = _new_names(cls, overrides, verb)
    problem = unknown_keys(cls, overrides)
    if problem:
        raise TfcompressError(problem)
    if config is None:
        return cls.from_config(overrides)
    if cls is not type(config):  # the settings the new class has (the rest were ignored)
        config = _from_settings(cls, settings)
    return config.with_overrides(**overrides) if overrides else config


def from_legacy(verb: str, settings: dict) -> MethodConfig:
    """The config of ``settings["method"]`` (a ``get_config()`` dict of an old all-methods
    config class) with the settings that method has, under their new names; the others are
    ignored, as the old class ignored them for that method.

    Example:
        >>> from_legacy("factorize", {"method": "asvd", "rank": 4, "alpha": 0.25, "damping": 1})
        ASVDConfig(..., rank=4, ..., exponent=0.25)
    """
    return _from_settings(config_class(verb, settings.get("method")), settings)


def _from_settings(cls: type, settings: dict) -> MethodConfig:
    names = {f.name for f in fields(cls)}
    settings = {cls.renamed.get(k, k): v for k, v in settings.items()}
    return cls.from_config({k: v for k, v in settings.items() if k in names})


def _new_names(cls: type, settings: dict, verb: str) -> dict:
    """``settings`` with the old names of ``cls``'s settings replaced (with a warning)."""
    out = {}
    for key, value in settings.items():
        new = cls.renamed.get(key)
        if new is not None:
            _deprecated(f"{verb} setting {key}=", f"{cls.__name__}({new}=...)", stacklevel=5)
        out[new or key] = value
    return out


def _deprecated(old: str, new: str, stacklevel: int = 4) -> None:
    # stacklevel: the user's line calling the verb (via resolve_config and the verb)
    warnings.warn(f"{old} is deprecated and will be removed in the next release: use {new}",
                  DeprecationWarning, stacklevel=stacklevel)
