"""``.keras`` files for models whose layers a method changed in place (codes instead of
kernels, a factorized layer swapped into a KerasHub block): any model class, any depth.

A changed model records per-layer ``layouts`` (``{kind: {path: entry}}``) and is saved
under the registered name ``tfcompress>CompressedModel``. Loading rebuilds the original
model from its own config, lets each kind's registered ``apply`` redo the changes at the
recorded paths (empty variables), and Keras then loads the saved values into them.

Example:
    >>> register_layout("quantized", apply_codes)   # once, by the method's module
    >>> mark(model, "quantized", {"block0/attn/query": {...}})
    >>> model.save("m.keras"); keras.models.load_model("m.keras")   # same outputs
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras.src.saving import object_registration

from tfcompress.core.layers import iter_layers
from tfcompress.errors import TfcompressError

_APPLY: dict[str, Callable] = {}
_ORDER: list[str] = []


def register_layout(kind: str, apply: Callable) -> None:
    """``apply(model, {path: entry})`` redoes ``kind``'s changes on a rebuilt float model;
    kinds registered first are applied first."""
    if kind not in _APPLY:
        _ORDER.append(kind)
    _APPLY[kind] = apply


@keras.saving.register_keras_serializable(package="tfcompress")
class CompressedModel:
    """Loader for changed models. Never instantiated: saved models name it as their class
    so that loading comes here; ``get_config`` lives on the saved model itself."""

    def get_config(self) -> dict:  # pragma: no cover - required by the registry only
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict):
        model = keras.saving.deserialize_keras_object(config["model"])
        if not model.built and config["model"].get("build_config"):
            model.build_from_config(config["model"]["build_config"])
        layouts = config["layouts"]
        unknown = [k for k in layouts if k not in _APPLY]
        if unknown:
            raise TfcompressError(f"the file holds {unknown} layers: import tfcompress first")
        for kind in [k for k in _ORDER if k in layouts]:
            _APPLY[kind](model, layouts[kind])
            mark(model, kind, layouts[kind])
        return model


_CLASSES: dict[type, type] = {}


def _marked_class(cls: type) -> type:
    if cls in _CLASSES:
        return _CLASSES[cls]

    def get_config(self):
        # the original class's own serialization (not serialize_keras_object: its
        # shared-object cache would answer with a reference to this very model)
        self.__class__ = cls
        try:
            base = {"module": cls.__module__, "class_name": cls.__name__,
                    "config": self.get_config(),
                    "registered_name": object_registration.get_registered_name(cls),
                    "build_config": self.get_build_config()}
        finally:
            self.__class__ = sub
        return {"model": base, "layouts": {k: dict(v) for k, v in self.tfc_layouts.items()}}

    sub = type(cls.__name__, (cls,), {"get_config": get_config, "__module__": cls.__module__})
    object_registration.GLOBAL_CUSTOM_NAMES[sub] = "tfcompress>CompressedModel"
    _CLASSES[cls] = sub
    return sub


def mark(model, kind: str, entries: dict):
    """Record ``entries`` (``{path: JSON-able entry}``) of ``kind`` on ``model``, in place,
    so that ``model.save`` writes a file that reloads them; returns ``model``."""
    if not isinstance(model, tuple(_CLASSES.values())):
        model.__class__ = _marked_class(type(model))
    layouts = dict(getattr(model, "tfc_layouts", {}))
    layouts[kind] = {**layouts.get(kind, {}), **entries}
    model.tfc_layouts = layouts
    return model


def layers_at(model, paths, kind: str) -> dict:
    """``{path: layer}`` for ``paths`` in ``model``; raises naming the missing ones."""
    layers = dict(iter_layers(model))
    missing = [p for p in paths if p not in layers]
    if missing:
        raise TfcompressError(
            f"{kind} layers {missing} are not in model {model.name!r} "
            f"({type(model).__name__}); layers named automatically (dense_3) get new names "
            "when a model is rebuilt: give the model's sublayers explicit names")
    return {p: layers[p] for p in paths}
