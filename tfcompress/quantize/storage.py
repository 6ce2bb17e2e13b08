"""Keras storage for quantized weights: layers keep codes (uint8, or two 4-bit codes per
byte), scales, offsets and codebooks instead of a float kernel, and decode them in ``call``.

The layers are registered Keras classes, ``Quantized<Class>`` for every class of
`tfcompress.core.layers.register_layer` (`QuantizedDense`, `QuantizedEinsumDense`,
`QuantizedEmbedding`, yours too): the float class's behaviour and config plus
``quantization_layout`` (shapes, bits, group rows). Their ``build`` runs the float class's,
whose weight is then only a shape (never allocated, so loading holds no float kernels), and
adds ``codes``, ``scale``, ``offset`` (affine schemes) and ``levels``, saved in that fixed
order with the other variables (bias) after. `store_codes`
puts them in a model (`tfcompress.core.replace`), so ``keras.saving.load_model`` round-trips
after ``import tfcompress``.

Example:
    >>> model = store_codes(model, {"block0_mlp_out": qtensor})   # that layer stores codes
    >>> model.save("int4.keras")
"""

from __future__ import annotations

import numpy as np
from keras import KerasTensor, ops

from tfcompress.core.layers import (
    class_spec,
    iter_layers,
    kernel_axes,
    kernel_of,
    layer_spec,
    weight_attribute,
)
from tfcompress.core.replace import (
    CompressedLayer,
    compressed_class,
    legacy_class,
    rebuilt_as,
    register_mixin,
    replace_layers,
)
from tfcompress.core.saving import layers_at, mark_state, register_restorer
from tfcompress.errors import TfcompressError
from tfcompress.quantize.packing import pack_int4, unpack_int4, unpack_int4_np
from tfcompress.quantize.quantizers import QTensor


class CodeStorage(CompressedLayer):
    """its weight decoded from stored codes (``quantization_layout`` in its config)."""

    prefix = "Quantized"
    compression = "quantize"
    config_key = "quantization_layout"

    def build(self, input_shape=None):
        self.__dict__["_tfc_float_build"] = True  # (not tracked by Keras)
        try:
            super().build(input_shape)
        finally:
            del self.__dict__["_tfc_float_build"]
        self._tfc_build(self.tfc_settings)

    def add_weight(self, *args, **kwargs):
        """A shape-only stand-in (no memory, no initializer run) for the float weight the
        float class's ``build`` asks for by the registered name; other weights as usual."""
        if (self.__dict__.get("_tfc_float_build")
                and kwargs.get("name") == class_spec(type(self)).weight):
            shape = kwargs.get("shape", args[0] if args else None)
            return KerasTensor(tuple(shape), dtype=kwargs.get("dtype") or self.variable_dtype)
        return super().add_weight(*args, **kwargs)

    def _tfc_build(self, meta: dict) -> None:
        self._tracker.unlock()
        # the float weight goes: Layer.__delattr__ would run gc.collect() (seconds per layer);
        # a variable only where the float build named it otherwise than the registry does
        stand_in = self.__dict__.pop(meta["attr"])
        if not isinstance(stand_in, KerasTensor):
            self._untrack_variable(stand_in)
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
        meta = self.tfc_settings
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

    def weight_value(self):
        """The decoded weight (the layer's ``kernel`` / ``embeddings``)."""
        cached = self.__dict__.get("_tfc_cached")
        return self._tfc_decode() if cached is None else cached

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


register_mixin(CodeStorage)


def _per_row(params, group: int, d_in: int):
    """Per-group ``params`` (n_groups, d_out) repeated to one row per input row; the last
    group may be shorter."""
    return ops.repeat(params, group, axis=0)[:d_in] if group < d_in else params


def layer_meta(layer, qt_or_meta) -> dict:
    """The layout entry of ``layer`` holding ``qt`` (shapes only; JSON-serializable)."""
    if isinstance(qt_or_meta, dict):
        return qt_or_meta
    qt: QTensor = qt_or_meta
    weight = kernel_of(layer)
    return {
        "attr": weight_attribute(type(layer)),
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


def quantized_layer(layer, qt: QTensor | dict, legacy: bool = False):
    """A built ``Quantized<Class>`` copy of ``layer`` (a float layer of a registered class)
    holding ``qt``'s codes; with a layout dict its codes are empty (for loading; ``legacy``:
    a file written before issue #27, see `tfcompress.core.replace.legacy_class`)."""
    if isinstance(layer, CodeStorage):
        raise TfcompressError(f"layer {layer.name!r} is already quantized")
    if layer_spec(layer) is None:
        raise TfcompressError(
            f"layer {layer.name!r} is a {type(layer).__name__}, which quantize does not know: "
            "join it with tfcompress.core.layers.register_layer(cls, weight=...)")
    meta = layer_meta(layer, qt)
    cls = compressed_class(CodeStorage, type(layer))
    new = rebuilt_as(layer, legacy_class(cls) if legacy else cls,
                     {**layer.get_config(), "quantization_layout": meta})
    weight = getattr(layer, meta["attr"])
    others = {v.name: v for v in layer.weights if v is not weight}
    for v in new.weights:
        if v.name in others:
            v.assign(others[v.name])
    if isinstance(qt, QTensor):
        codes = pack_int4(qt.codes) if meta["packed"] else qt.codes
        new.tfc_codes.assign(codes.astype(np.uint8))
        new.tfc_scale.assign(qt.scale)
        new.tfc_levels.assign(qt.levels)
        if qt.offset is not None:
            new.tfc_offset.assign(qt.offset)
    return new


def store_codes(model, codes: dict):
    """``model`` with the layer at each path of ``codes`` (``{path: QTensor}``) storing its
    codes; a functional/Sequential model comes back rebuilt (`tfcompress.core.replace`)."""
    layers = dict(iter_layers(model))
    return replace_layers(model, {p: quantized_layer(layers[p], qt) for p, qt in codes.items()})


def quantized_layout(model) -> dict:
    """``{path: layout}`` of ``model``'s quantized layers (shapes, bits, group rows)."""
    return {p: la.tfc_settings for p, la in iter_layers(model) if isinstance(la, CodeStorage)}


def _restore_layout(model, layout: dict):
    """Loader of files written before issue #27 (a ``quantize`` layout on the model)."""
    found = layers_at(model, layout)
    layout = dict(zip(found, layout.values(), strict=True))
    model = replace_layers(model, {p: quantized_layer(found[p], meta, legacy=True)
                                   for p, meta in layout.items()}, record=False)
    mark_state(model, "quantize", layout)
    return model


register_restorer("quantize", _restore_layout)


def cache_decoded(model, enabled: bool = True):
    """Keep every quantized layer's decoded weight in memory (``enabled=False``: drop it).

    Calls then run float matmuls on the cached weights instead of unpacking codes each time:
    generation runs at the float model's speed and memory; the codes stay what is saved.
    Returns ``model`` (changed in place).

    Example:
        >>> generate(keras_forward(cache_decoded(int4_model)), prompt, 30)
    """
    for _, layer in iter_layers(model):
        if isinstance(layer, CodeStorage):
            if enabled:
                # a plain attribute, not a tracked variable: never saved with the model
                layer.__dict__["_tfc_cached"] = ops.convert_to_tensor(layer._tfc_decode())
            else:
                layer.__dict__.pop("_tfc_cached", None)
    return model


def is_quantized(layer) -> bool:
    return isinstance(layer, CodeStorage)


def signed_codes(layer) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``(codes, scale, group_rows)`` of a quantized layer whose weight is exactly
    ``codes * scale`` with signed integer codes (schemes ``symmetric`` and ``litert``): codes
    int8 ``(d_in, d_out)``, scale ``(n_groups, d_out)``. None for any other layer (float,
    affine, codebooks). Lets an exporter write the codes as they are.

    Example:
        >>> int8 = quantize(model, RTNConfig(bits=8, scheme="symmetric"), verbose=0)
        >>> codes, scale, group = signed_codes(int8.get_layer("block0_mlp_in"))
        >>> codes.dtype, codes.shape, scale.shape, group      # one scale a channel
        (dtype('int8'), (16, 128), (1, 128), 16)
        >>> np.array_equal(codes * scale, int8.get_layer("block0_mlp_in").kernel)
        True
        >>> signed_codes(model.get_layer("block0_mlp_in")) is None    # a float layer
        True
    """
    if not isinstance(layer, CodeStorage):
        return None
    meta = layer.tfc_settings
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
