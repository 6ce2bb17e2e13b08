"""The model-level record of compression state, for what a model's own config cannot say.

Compressed layers are registered Keras classes that carry their settings in their configs
(see `tfcompress.core.replace` for the decision): a functional or Sequential model holding
them at top level saves and loads as any Keras model. Two things need more, and this module
is their one path: layers swapped in *inside* other layers or subclassed / KerasHub models
(whose ``from_config`` builds the plain layers again), and pruning masks kept beside the
weights during ``fit`` (model state: outside ``model.weights`` and ``count_params``, one
schedule ranking every pruned layer together; `tfcompress.prune.training`). A method
records those with ``mark_state(model, kind, payload)``: the model's class becomes a
same-named subclass registered as ``tfcompress>CompressedModel``, whose saved config is the
plain model's plus ``{kind: payload}``. Loading rebuilds the plain model, then calls the
restorer registered for each kind, and Keras loads the saved variables into the result.
Without ``import tfcompress`` Keras cannot find the class; the saved config then starts
with the fix (``"requires": "import tfcompress ..."``). Files written before issue #27
(kinds ``quantize``, ``qat``, ``factorize``) load through the same restorers.

Example:
    >>> register_restorer("prune", restore_masks)       # once, where the method is defined
    >>> mark_state(model, "prune", {"paths": [...]})    # after attaching the state
    >>> model.save("pruned.keras"); keras.models.load_model("pruned.keras")  # state is back
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras.src.saving import object_registration

from tfcompress.core.distribute import WorkerSafeFit, keep_worker_safe, plain_model_class
from tfcompress.core.layers import iter_layers
from tfcompress.core.validation import (
    check_input_file,
    check_keras_archive,
    compression_state,
    reading,
    unknown_classes,
)
from tfcompress.errors import TfcompressError

REQUIRES = ("import tfcompress before keras.models.load_model: this model holds tfcompress "
            "compression state (pruning masks, quantized codes or QAT layers)")
_RESTORERS: dict[str, Callable] = {}
_CLASSES: dict[type, type] = {}


def register_restorer(kind: str, restore: Callable) -> None:
    """``restore(model, payload)`` re-attaches ``kind``'s state to a freshly built model and
    returns the model (a new one where it rebuilt a graph) or None (``model``, changed)."""
    _RESTORERS[kind] = restore


def mark_state(model, kind: str, payload) -> None:
    """Record ``kind``'s ``payload`` on ``model`` (in place) so ``model.save`` keeps it."""
    base = plain_class(type(model))
    model.__class__ = _state_class(base)
    object.__setattr__(model, "tfc_state", {**compression_state(model), kind: payload})


def unmark_state(model, kind: str) -> None:
    """Forget ``kind``; a model left without state gets its plain class back."""
    state = compression_state(model)
    state.pop(kind, None)
    object.__setattr__(model, "tfc_state", state)
    if not state:
        model.__class__ = plain_class(type(model))
        keep_worker_safe(model)  # compressed layers may stay


def layers_at(model, paths) -> dict:
    """``{path: layer}`` for ``paths`` recorded on a saved model, keyed by the paths in
    ``model`` now: a reloaded model's auto-generated layer names (``dense_3``) may differ from
    the saved ones, so those are found by their position in the saved model's layer order."""
    now = list(iter_layers(model))
    by_path = dict(now)
    saved = getattr(model, "_tfc_saved_paths", None) or []
    position = {p: i for i, p in enumerate(saved)} if len(saved) == len(now) else {}
    out = {}
    for path in paths:
        if path in by_path:
            out[path] = by_path[path]
        elif path in position:
            new_path, layer = now[position[path]]
            out[new_path] = layer
        else:
            raise TfcompressError(f"layer {path!r} is not in model {model.name!r}")
    return out


def plain_class(cls: type) -> type:
    cls = plain_model_class(cls)
    return next((plain for plain, marked in _CLASSES.items() if marked is cls), cls)


@keras.saving.register_keras_serializable(package="tfcompress")
class CompressedModel:
    """Loader of marked models; never instantiated (the saved model names it as its class)."""

    def get_config(self) -> dict:  # pragma: no cover - required by the registry only
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict):
        return restore(config)


def restore(config: dict):
    """The model saved with ``config``, its compression state re-attached (variables empty:
    Keras fills them from the file)."""
    model = keras.saving.deserialize_keras_object(config["model"])
    if not model.built and config["model"].get("build_config"):
        model.build_from_config(config["model"]["build_config"])
    unknown = sorted(set(config["state"]) - set(_RESTORERS))
    if unknown:
        raise TfcompressError(f"saved model holds {unknown} state, which this tfcompress "
                              f"cannot restore (it knows {sorted(_RESTORERS)})")
    for kind, payload in config["state"].items():
        # a restorer that rebuilds a graph returns a new model: the saved paths go with it
        object.__setattr__(model, "_tfc_saved_paths", config.get("layers", []))
        model = _RESTORERS[kind](model, payload) or model
    return model


def _state_class(cls: type) -> type:
    if cls in _CLASSES:
        return _CLASSES[cls]

    def get_config(self):
        # the plain class's own serialization (serialize_keras_object's shared-object cache
        # would answer with a reference to this very model)
        self.__class__ = cls
        try:
            base = {"module": cls.__module__, "class_name": cls.__name__,
                    "config": self.get_config(),
                    "registered_name": object_registration.get_registered_name(cls),
                    "build_config": self.get_build_config()}
        finally:
            self.__class__ = sub
        return {"requires": REQUIRES, "model": base, "state": compression_state(self),
                "layers": [path for path, _ in iter_layers(self)]}

    def __init__(self, *args):
        # a constructor unlike Functional's makes clone_model build a plain model (the
        # state belongs to this model's variables, not to its copies)
        cls.__init__(self, *args)

    # WorkerSafeFit: Keras's own fit fails across MultiWorkerMirroredStrategy workers
    sub = type(cls.__name__, (WorkerSafeFit, cls), {
        "get_config": get_config, "__init__": __init__, "__module__": "tfcompress",
        "from_config": classmethod(lambda _cls, config, custom_objects=None: restore(config)),
    })
    object_registration.GLOBAL_CUSTOM_NAMES[sub] = "tfcompress>CompressedModel"
    _CLASSES[cls] = sub
    return sub


def load_model(path, arg: str = "model"):
    """``keras.models.load_model`` for a ``.keras`` file, compressed or not, with errors that
    name the file (missing, empty, truncated, not a Keras archive)."""
    path = check_input_file(path, arg, ".keras")
    check_keras_archive(path, arg)
    try:
        return keras.models.load_model(path)
    except (TypeError, ValueError) as err:
        custom = _custom_classes(path)
        if not custom:
            with reading(path, "a .keras model"):
                raise
        module, name = custom[0].rsplit(".", 1)
        raise TfcompressError(
            f"{arg} {str(path)!r} uses classes of your own that are not imported: "
            f"{', '.join(custom)}. Import their module first (command line: --import {module} "
            f"or --custom-objects {module}:{name}; recipe: model.custom_objects: "
            f"[{module}:{name}]; Python: import {module} before loading)") from err


def _custom_classes(path) -> list[str]:
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return unknown_classes(json.loads(archive.read("config.json")))
