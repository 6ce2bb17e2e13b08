"""Put new layers in place of a model's layers, so that ``.keras`` files keep them.

Decision (issue #27): compression state lives in the layers. A compressed layer is a Keras
class of its own, registered under ``tfcompress>`` (`QuantizedDense`, `QATDense`,
`LowRankDense`...), whose ``get_config`` carries its settings and whose ``build`` makes its
variables in a fixed order; a model gets one by replacing a layer *object*, never by changing
a live layer's class. Where the layer sits decides how, one way per case:

- a top-level layer of a functional or Sequential model: the graph is rebuilt with
  ``keras.models.clone_model(clone_function=...)`` (the other layers are shared, weights
  kept), so the model's own config names the new class and plain ``keras.saving.load_model``
  rebuilds it. The model returned is a new object, also with ``inplace=True``.
- any other layer (inside a layer such as MultiHeadAttention, or in a subclassed or KerasHub
  model): its parent's attribute is set to the new layer. The parent's ``from_config`` builds
  the plain layer again, so this is the one case that needs a model-level record: the model
  keeps ``{path: {"layer": new layer's config}}`` (`tfcompress.core.saving.mark_state`, kind
  ``"layers"``) and its loader swaps those layers in before Keras loads the variables.

Example:
    >>> model = replace_layers(model, {"up": new_up, "attn/query": new_query})
    >>> model.save("small.keras"); keras.saving.load_model("small.keras")  # after import tfcompress
"""

from __future__ import annotations

import keras

from tfcompress.core.distribute import keep_worker_safe
from tfcompress.core.layers import (
    class_spec,
    clone_graph,
    iter_layers,
    on_register,
    register_compressed,
)
from tfcompress.core.saving import (
    compression_state,
    layers_at,
    mark_state,
    register_restorer,
    unmark_state,
)
from tfcompress.errors import TfcompressError

RECORD = "layers"  # the model-level record's kind


_CLASSES: dict[tuple[type, type], type] = {}


class CompressedLayer:
    """Base of the mixins `compressed_class` puts before a registered layer class: the new
    class is named ``prefix`` + the float class's name, holds ``compression`` (the kind
    `tfcompress.core.validation.check_model` reports), and its config's entry ``config_key``
    carries its settings, kept as ``self.tfc_settings`` (what ``read_settings`` makes of them).
    A mixin adds ``weight_value`` (what the weight attribute answers) and its variables.

    Example:
        >>> class Clipped(CompressedLayer):
        ...     'its weight clipped (clip: {"limit"} in its config).'
        ...     prefix, compression, config_key = "Clipped", "clip", "clip"
        ...     def weight_value(self):
        ...         limit = self.tfc_settings["limit"]
        ...         return keras.ops.clip(self.__dict__["_kernel"], -limit, limit)
        >>> layer = compressed_class(Clipped, keras.layers.Dense)(2, clip={"limit": 1.0})
        >>> type(layer).__name__, layer.get_config()["clip"], "clip" in layer.float_config()
        ('ClippedDense', {'limit': 1.0}, False)
        >>> layer.build((None, 3)); float(keras.ops.max(keras.ops.abs(layer.kernel))) <= 1.0
        True
    """

    prefix: str
    compression: str
    config_key: str
    float_class: type  # set on each class compressed_class makes

    def __init__(self, *args, **kwargs):
        if self.config_key not in kwargs:
            raise TfcompressError(f"{type(self).__name__} needs its settings "
                                  f"{self.config_key!r} in its config, got {sorted(kwargs)}")
        settings = kwargs.pop(self.config_key)
        super().__init__(*args, **kwargs)
        self.tfc_settings = self.read_settings(settings)

    @staticmethod
    def read_settings(settings: dict) -> dict:
        """The settings kept (JSON-serializable): a copy of those in the config."""
        return dict(settings)

    def get_config(self) -> dict:
        return {**super().get_config(), self.config_key: self.tfc_settings}

    def float_config(self) -> dict:
        """This layer's config without its settings: its float class's."""
        return {k: v for k, v in self.get_config().items() if k != self.config_key}


def compressed_class(mixin: type, cls: type) -> type:
    """``mixin.prefix + cls.__name__`` (``QuantizedDense``): ``mixin`` (a `CompressedLayer`)
    before the registered layer class ``cls``, its weight attribute a property answering
    ``mixin.weight_value``; registered with Keras under ``tfcompress>`` so its files load
    after ``import tfcompress``, and as a compressed class (`register_compressed`).
    """
    if not issubclass(mixin, CompressedLayer):
        raise TfcompressError(f"mixin must be a CompressedLayer subclass, got {mixin!r}")
    if (mixin, cls) not in _CLASSES:
        weight = class_spec(cls).weight
        # the setter: a layer's own build may assign the weight (``self.w = add_weight()``);
        # the variable then lives in the instance's __dict__, where the mixins read it
        sub = type(mixin.prefix + cls.__name__, (mixin, cls), {
            weight: property(mixin.weight_value, _set_raw(weight)), "float_class": cls,
            "__module__": mixin.__module__,
            "__doc__": f"{cls.__name__} with {mixin.__doc__}"})
        _CLASSES[mixin, cls] = register_compressed(
            keras.saving.register_keras_serializable("tfcompress")(sub))
    return _CLASSES[mixin, cls]


def _set_raw(weight: str):
    def setter(self, value):
        self.__dict__[weight] = value
    return setter


def legacy_class(cls: type) -> type:
    """Compressed class ``cls`` under its float class's name, module and config, for files
    written before issue #27 only: Keras keys a graph model's variables by class name, so
    their variables load only into classes of the old names, and re-saving such a model
    writes the old form again (its loader keeps the model's old record). Unregistered."""
    if (legacy_class, cls) not in _CLASSES:
        plain = cls.float_class

        def get_config(self):
            return {k: v for k, v in cls.get_config(self).items() if k != cls.config_key}

        _CLASSES[legacy_class, cls] = type(plain.__name__, (cls,), {
            "get_config": get_config, "__module__": plain.__module__})
    return _CLASSES[legacy_class, cls]


def rebuilt_as(layer, cls: type, config: dict):
    """A new ``cls.from_config(config)`` built like ``layer`` (its variables not copied)."""
    new = cls.from_config(config)
    new.build_from_config(layer.get_build_config())
    return new


def register_mixin(mixin: type) -> None:
    """Make ``mixin``'s compressed class of every registered layer class, now and later."""
    on_register(lambda cls: compressed_class(mixin, cls))


def is_graph_model(model) -> bool:
    """A functional or Sequential model (its config lists its layers' configs)."""
    from keras.src.models.functional import Functional

    return isinstance(model, Functional | keras.Sequential)


def replace_layers(model, new: dict, record: bool = True):
    """``model`` with the layers at ``new``'s paths replaced by ``new``'s built layers.

    Top-level layers of a functional/Sequential model are swapped by rebuilding its graph (a
    new model is returned); others on their parent, recorded on the model so its ``.keras``
    file swaps them in again (``record=False``: the new layers are plain ones the parent's
    config builds, so their records are dropped).
    """
    layers = dict(iter_layers(model))
    missing = sorted(set(new) - set(layers))
    if missing:
        raise TfcompressError(f"layers {missing} are not in model {model.name!r}")
    top = {id(la) for la in model.layers} if is_graph_model(model) else set()
    graph = {id(layers[p]): la for p, la in new.items() if id(layers[p]) in top}
    if graph:
        saved = compression_state(model).get(RECORD)
        model = clone_graph(model, lambda la: graph.get(id(la), la))
        if saved:  # nested swaps already made stay on the shared parents
            mark_state(model, RECORD, saved)
    nested = {p: la for p, la in new.items() if id(layers[p]) not in top}
    for path, layer in nested.items():
        swap_sublayer(model, layers[path], layer)
    if nested:
        _record(model, nested, record)
    return keep_worker_safe(model)  # decided by its layers: a graph model has no record


def _record(model, nested: dict, record: bool) -> None:
    saved = dict(compression_state(model).get(RECORD, {}))
    for path, layer in nested.items():
        if record:
            saved[path] = {"layer": keras.saving.serialize_keras_object(layer)}
        else:
            saved.pop(path, None)
    if saved:
        mark_state(model, RECORD, saved)
    else:
        unmark_state(model, RECORD)


def swap_sublayer(model, old, new) -> None:
    """Set the attribute of ``old``'s parent layer (or of ``model``) that holds ``old`` to
    ``new``, keeping Keras's tracking right."""
    for parent in [model, *model._flatten_layers(include_self=False, recursive=True)]:
        for name, value in vars(parent).items():
            if value is old:
                return _set_sublayer(parent, name, None, old, new)
            if isinstance(value, list | tuple) and name != "_layers":
                for i, item in enumerate(value):
                    if item is old:
                        return _set_sublayer(parent, name, i, old, new)
    raise TfcompressError(f"cannot find the layer holding {old.name!r} to replace it")


def _set_sublayer(parent, name: str, index: int | None, old, new) -> None:
    tracker = parent._tracker
    locked = tracker.locked
    tracker.unlock()  # built layers lock their state; a swapped sublayer must be re-tracked
    order = parent._layers
    position = next((i for i, la in enumerate(order) if la is old), None)
    try:
        tracker.untrack(old)
        if index is None:
            setattr(parent, name, new)
        else:
            getattr(parent, name)[index] = new
            tracker.track(new)
        if position is not None and order and order[-1] is new:
            # tracking appends: put it where the old one was, so the parent's layers keep
            # the order a model rebuilt from its config has (copies match layer by layer)
            order.insert(position, order.pop())
    finally:
        if locked:
            tracker.lock()


def restore_layers(model, payload: dict):
    """Loader of the ``"layers"`` record: swap the recorded layers (built, variables empty
    until Keras loads them) into a model rebuilt from its config."""
    found = layers_at(model, payload)
    for old, entry in zip(found.values(), payload.values(), strict=True):
        swap_sublayer(model, old, keras.saving.deserialize_keras_object(entry["layer"]))
    mark_state(model, RECORD, dict(zip(found, payload.values(), strict=True)))
    return model


register_restorer(RECORD, restore_layers)
register_restorer("factorize", restore_layers)  # files written before the "layers" record
