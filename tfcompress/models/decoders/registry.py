"""Decoder adapters by model class: `register_decoder` adds one, `read_decoder` finds the
first along the model's MRO that accepts it.

An adapter is ``fn(model) -> Decoder | None`` (None: not this adapter's model, look further
along the MRO). Built-in families register by class path, so KerasHub is imported only by a
model that is one of its own.

Example:
    >>> @register_decoder(MyLM)
    ... def my_lm(model):
    ...     return Decoder("my_lm", ..., embed=..., layer=..., final_norm=..., head=...)
    >>> read_decoder(MyLM(...)).kind
    'my_lm'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tfcompress.errors import TfcompressError

# class or "module.QualName" -> adapter; the built-in families' modules register on import
_ADAPTERS: dict[object, Callable] = {}
_BUILTIN = ("ours", "gpt2", "hub_llama", "gemma", "phi3", "smollm3")
_loaded = False

HOW_TO_REGISTER = (
    "an adapter is fn(model) -> tfcompress.models.Decoder: the shape (vocab, d_model, layers, "
    "heads, kv heads, head_dim) and either the weights as arrays for the shared maths, or "
    "callables embed(tokens, positions), layer(i, x, step) (one layer's cached call: "
    "step.rotate, step.write, step.attend), final_norm(x) and head(x); register it with "
    "@tfcompress.models.register_decoder(YourModelClass)")


def register_decoder(cls) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` reads models of class ``cls`` (or its subclasses) into a `Decoder`.

    ``cls`` is a class or its ``"module.QualName"``. A later registration for the same class
    replaces the earlier one.

    Example:
        >>> @register_decoder(MyLM)
        ... def my_lm(model): ...
    """
    if not (isinstance(cls, type) or (isinstance(cls, str) and "." in cls)):
        raise TfcompressError(f"register_decoder takes a class or its 'module.QualName', got "
                              f"{cls!r}")

    def add(fn: Callable) -> Callable:
        if not callable(fn):
            raise TfcompressError(f"a decoder adapter must be callable, got {fn!r}")
        _ADAPTERS[cls] = fn
        return fn

    return add


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in _BUILTIN:
            importlib.import_module(f"tfcompress.models.decoders.{name}")


def registered() -> list[str]:
    """The names of the classes with an adapter."""
    _load_builtin()
    return [c if isinstance(c, str) else f"{c.__module__}.{c.__qualname__}" for c in _ADAPTERS]


def read_decoder(model):
    """The `Decoder` of ``model`` from the first adapter along its class's MRO that accepts
    it (the model is not changed). Raises `TfcompressError` naming what an adapter must give
    when none does."""
    _load_builtin()
    for cls in type(model).__mro__:
        for key in (cls, f"{cls.__module__}.{cls.__qualname__}"):
            adapter = _ADAPTERS.get(key)
            if adapter is None:
                continue
            dec = adapter(model)
            if dec is not None:
                return dec
    kind = type(model).__name__
    names = sorted({n.rsplit(".", 1)[-1] for n in registered()})
    raise TfcompressError(
        f"model {getattr(model, 'name', kind)!r} ({kind}) is not an architecture export_llm "
        f"knows (adapters: {', '.join(names)}; and tfcompress.models build_gpt/build_llama "
        f"models); {HOW_TO_REGISTER}")
