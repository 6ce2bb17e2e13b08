"""Keras storage for quantized weights: layers keep codes (uint8, or two 4-bit codes per
byte), scales, offsets and codebooks instead of a float kernel, and decode them in ``call``.

A quantized Dense/EinsumDense/Embedding (nested ones too, e.g. inside MultiHeadAttention)
keeps its class's behaviour: only its ``kernel``/``embeddings`` becomes a decoded tensor.
The model records which layers hold codes (``layout``) with `tfcompress.core.saving`, whose
loader rebuilds the float model, re-attaches the code storage, then lets Keras load the saved
codes: ``keras.models.load_model`` round-trips (after ``import tfcompress``).

Example:
    >>> attach(layer, qtensor)             # layer now stores codes
    >>> model = mark_quantized(model)      # so .keras files save and reload the codes
"""

from __future__ import annotations

import numpy as np
from keras import ops
from keras.src.saving import object_registration

from tfcompress.core.layers import iter_layers, kernel_axes, kernel_of
from tfcompress.core.saving import compression_state, layers_at, mark_state, register_restorer
from tfcompress.errors import TfcompressError
from tfcompress.quantize.packing import pack_int4, unpack_int4, unpack_int4_np
from tfcompress.quantize.quantizers import QTensor

WEIGHT_ATTRS = {"Embedding": "_embeddings"}  # else "_kernel"


def _float_attr(layer) -> str:
    for cls in type(layer).__mro__:
        if cls.__name__ in WEIGHT_ATTRS:
            return WEIGHT_ATTRS[cls.__name__]
    return "_kernel"


class _CodeStorage:
    """Mixin placed before a Keras layer class: the weight is decoded from stored codes."""

    def _tfc_build(self, meta: dict) -> None:
        self._tracker.unlock()
        if hasattr(self, meta["attr"]):
            # Layer.__delattr__ would run gc.collect() (over a second per layer)
            self._untrack_variable(getattr(self, meta["attr"]))
            object.__delattr__(self, meta["attr"])
        self.tfc_meta = meta
        d_in, d_out = meta["matrix_shape"]
        rows = (d_in + 1) // 2 if meta["packed"] else d_in
        self.tfc_codes = self.add_weight(name="codes", shape=(rows, d_out), dtype="uint8",
                                         initializer="zeros", trainable=False)
        self.tfc_scale = self.add_weight(name="scale", shape=meta["scale_shape"],
                                         initializer="ones", trainable=False)
        self.tfc_offset = None
        if meta["offset_shape"]:
            self.tfc_offset = self.add_weight(name="offset", shape=meta["offset_shape"],
                                              initializer="zeros", trainable=False)
        self.tfc_levels = self.add_weight(name="levels", shape=meta["levels_shape"],
                                          initializer="zeros", trainable=False)
        self._tracker.lock()

    def _tfc_vars(self) -> list:
        extra = [v for v in (self.tfc_offset, getattr(self, "bias", None)) if v is not None]
        return [self.tfc_codes, self.tfc_scale, self.tfc_levels, *extra]

    def _tfc_decode(self):
        meta = self.tfc_meta
        d_in, d_out = meta["matrix_shape"]
        codes = (unpack_int4(self.tfc_codes, d_in) if meta["packed"]
                 else ops.cast(self.tfc_codes, "int32"))
        n_levels = meta["levels_shape"][1]
        if meta["levels_shape"][0] > 1:  # one codebook per output channel
            codes = codes + n_levels * ops.arange(d_out, dtype="int32")[None, :]
        w = ops.take(ops.reshape(self.tfc_levels, (-1,)), codes)
        group = meta["group_rows"]
        w = w * _per_row(self.tfc_scale, group, d_in)
        if self.tfc_offset is not None:
            w = w + _per_row(self.tfc_offset, group, d_in)
        order = meta.get("axes") or list(range(len(meta["weight_shape"])))
        w = ops.reshape(w, [meta["weight_shape"][i] for i in order])
        if order != sorted(order):  # codes are stored input axes first (see to_matrix)
            w = ops.transpose(w, [int(i) for i in np.argsort(order)])
        return ops.cast(w, self.compute_dtype)

    def _tfc_weight(self):
        cached = self.__dict__.get("_tfc_cached")
        return self._tfc_decode() if cached is None else cached

    @property
    def kernel(self):
        return self._tfc_weight()

    @property
    def embeddings(self):
        return self._tfc_weight()

    def save_own_variables(self, store):
        for i, v in enumerate(self._tfc_vars()):
            store[str(i)] = v

    def load_own_variables(self, store):
        variables = self._tfc_vars()
        if len(store.keys()) != len(variables):
            raise TfcompressError(
                f"layer {self.name!r} holds {len(variables)} quantized variables but the file "
                f"has {len(store.keys())}"
            )
        for i, v in enumerate(variables):
            v.assign(store[str(i)])
        self.__dict__.pop("_tfc_cached", None)  # decoded from the old codes


def _per_row(params, group: int, d_in: int):
    """Per-group ``params`` (n_groups, d_out) repeated to one row per input row; the last
    group may be shorter."""
    return ops.repeat(params, group, axis=0)[:d_in] if group < d_in else params


_MIXED_CLASSES: dict[tuple[type, type], type] = {}


def same_name_subclass(mixin: type, cls: type) -> type:
    """``cls`` with ``mixin`` in front, under ``cls``'s name, module and registered Keras
    name: the layer's saved config is unchanged, so the file reloads with Keras's own class."""
    if (mixin, cls) not in _MIXED_CLASSES:
        sub = type(cls.__name__, (mixin, cls), {"__module__": cls.__module__})
        object_registration.GLOBAL_CUSTOM_NAMES[sub] = object_registration.get_registered_name(
            cls)
        _MIXED_CLASSES[mixin, cls] = sub
    return _MIXED_CLASSES[mixin, cls]


def layer_meta(layer, qt_or_meta) -> dict:
    """The layout entry of ``layer`` holding ``qt`` (shapes only; JSON-serializable)."""
    if isinstance(qt_or_meta, dict):
        return qt_or_meta
    qt: QTensor = qt_or_meta
    weight = kernel_of(layer)
    return {
        "attr": _float_attr(layer),
        "weight_shape": list(weight.shape),
        "axes": list(kernel_axes(layer)[0]),
        "matrix_shape": list(qt.codes.shape),
        "packed": qt.bits <= 4,
        "bits": qt.bits,
        "group_rows": qt.group_rows,
        "scale_shape": list(qt.scale.shape),
        "offset_shape": None if qt.offset is None else list(qt.offset.shape),
        "levels_shape": list(qt.levels.shape),
    }


def attach(layer, qt: QTensor | dict) -> dict:
    """Turn ``layer`` (built Dense/EinsumDense/Embedding) into code storage, in place.

    With a `QTensor` the codes are written; with a layout dict only empty variables are made
    (for loading). Returns the layout entry.
    """
    if isinstance(layer, _CodeStorage):
        raise TfcompressError(f"layer {layer.name!r} is already quantized")
    meta = layer_meta(layer, qt)
    layer.__class__ = same_name_subclass(_CodeStorage, type(layer))
    layer._tfc_build(meta)
    if isinstance(qt, QTensor):
        codes = pack_int4(qt.codes) if meta["packed"] else qt.codes
        layer.tfc_codes.assign(codes.astype(np.uint8))
        layer.tfc_scale.assign(qt.scale)
        layer.tfc_levels.assign(qt.levels)
        if qt.offset is not None:
            layer.tfc_offset.assign(qt.offset)
    return meta


# -- model level: save and reload ------------------------------------------------------------


def apply_layout(model, layout: dict):
    """Attach empty code storage at every path of ``layout`` and mark ``model`` (in place)."""
    layers = layers_at(model, layout)
    layout = dict(zip(layers, layout.values(), strict=True))
    for path, meta in layout.items():
        if not isinstance(layers[path], _CodeStorage):
            attach(layers[path], meta)
    return mark_quantized(model, layout)


def mark_quantized(model, layout: dict):
    """Record ``layout`` on ``model`` (in place) so ``model.save`` keeps the codes."""
    mark_state(model, "quantize", {**compression_state(model).get("quantize", {}), **layout})
    return model


register_restorer("quantize", apply_layout)


def cache_decoded(model, enabled: bool = True):
    """Keep every quantized layer's decoded weight in memory (``enabled=False``: drop it).

    Calls then run float matmuls on the cached weights instead of unpacking codes each time:
    generation runs at the float model's speed and memory; the codes stay what is saved.
    Returns ``model`` (changed in place).

    Example:
        >>> generate(keras_forward(cache_decoded(int4_model)), prompt, 30)
    """
    for _, layer in iter_layers(model):
        if isinstance(layer, _CodeStorage):
            if enabled:
                # a plain attribute, not a tracked variable: never saved with the model
                layer.__dict__["_tfc_cached"] = ops.convert_to_tensor(layer._tfc_decode())
            else:
                layer.__dict__.pop("_tfc_cached", None)
    return model


def is_quantized(layer) -> bool:
    return isinstance(layer, _CodeStorage)


def signed_codes(layer) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``(codes, scale, group_rows)`` of a quantized layer whose weight is exactly
    ``codes * scale`` with signed integer codes (schemes ``symmetric`` and ``litert``): codes
    int8 ``(d_in, d_out)``, scale ``(n_groups, d_out)``. None for any other layer (float,
    affine, codebooks). Lets an exporter write the codes as they are.

    Example:
        >>> codes, scale, group = signed_codes(model.get_layer("block0_attn_q"))
    """
    if not isinstance(layer, _CodeStorage):
        return None
    meta = layer.tfc_meta
    levels = np.asarray(layer.tfc_levels.numpy())
    bits = meta["bits"]
    signed = np.arange(2**bits) - 2 ** (bits - 1)
    if layer.tfc_offset is not None or levels.shape != (1, 2**bits) or not np.array_equal(
            levels[0], signed):
        return None
    d_in = meta["matrix_shape"][0]
    stored = np.asarray(layer.tfc_codes.numpy())
    codes = unpack_int4_np(stored, d_in) if meta["packed"] else stored
    return ((codes.astype(np.int16) - 2 ** (bits - 1)).astype(np.int8),
            np.asarray(layer.tfc_scale.numpy(), np.float32), int(meta["group_rows"]))
