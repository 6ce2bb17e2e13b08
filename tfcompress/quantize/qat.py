"""Quantization-aware training for Keras 3: weights are fake-quantized in the forward pass
(affine min-max, per channel or group-wise, like `Quantizer`) and gradients pass straight
through the rounding, for Dense, EinsumDense (so MultiHeadAttention) and Embedding.

The QAT model is an ordinary Keras model: compile and ``fit`` it with any loss, or wrap it
in a distiller as the student (distillation-aware QAT). `strip_qat` then puts the weights on
the grid and `quantize` with the same settings stores them as codes, exactly. Its layers are
registered classes ``QAT<Class>`` (`QATDense`...: the float class plus ``qat``, its bits and
group size, in the config; variables and saved file those of the float class), put in the
model by `tfcompress.core.replace`, so its ``.keras`` file reloads as a QAT model.

Example:
    >>> config = RTNConfig(bits=4, granularity="group", group_size=32)
    >>> qmodel = qat(model, config)
    >>> train_lm(qmodel, dataset, steps=100)
    >>> int4 = quantize(strip_qat(qmodel), config)
"""

from __future__ import annotations

from keras import ops

from tfcompress.core.layers import (
    copy_model,
    from_matrix,
    iter_layers,
    kernel_axes,
    matrix_shape,
    require_keras3,
    select_layers,
    to_matrix,
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
from tfcompress.core.saving import layers_at, mark_state, register_restorer, unmark_state
from tfcompress.core.validation import check_model
from tfcompress.errors import TfcompressError
from tfcompress.quantize.config import GPTQConfig, QuantizeConfig, RTNConfig


def fake_quantize(w, bits: int, group_rows: int | None = None):
    """Affine min-max fake quantization of a ``(d_in, d_out)`` tensor with a
    straight-through gradient: forward ``dequantize(quantize(w))``, backward identity.

    Ranges are per output channel over ``group_rows`` input rows (all rows when None); a
    shorter last group is padded with copies of its own last row, which leave its range as is.
    """
    d_in, d_out = w.shape
    g = min(group_rows or d_in, d_in)
    pad = -d_in % g
    if pad:
        w_full = ops.concatenate([w, ops.repeat(w[-1:], pad, axis=0)], axis=0)
    else:
        w_full = w
    blocks = ops.reshape(w_full, ((d_in + pad) // g, g, d_out))
    lo = ops.stop_gradient(ops.min(blocks, axis=1, keepdims=True))
    hi = ops.stop_gradient(ops.max(blocks, axis=1, keepdims=True))
    span = hi - lo
    scale = ops.where(span > 0, span, ops.ones_like(span)) / (2**bits - 1)
    q = ops.clip(ops.round((blocks - lo) / scale), 0, 2**bits - 1) * scale + lo
    q = ops.reshape(q, (d_in + pad, d_out))[:d_in]
    return w + ops.stop_gradient(q - w)


class FakeQuant(CompressedLayer):
    """its weight fake-quantized when read (``qat``: ``{"bits", "group"}`` in its config)."""

    prefix = "QAT"
    compression = "qat"
    config_key = "qat"

    @staticmethod
    def read_settings(settings: dict) -> dict:
        return {"bits": int(settings["bits"]), "group": settings.get("group")}

    def build(self, input_shape=None):
        super().build(input_shape)
        self.qat_attr = weight_attribute(self.float_class)
        self.qat_axes = None  # the weight reads as the float one while its axes are found
        self.qat_axes = kernel_axes(self)

    def weight_value(self):
        """The fake-quantized weight (the layer's ``kernel`` / ``embeddings``)."""
        raw = self.__dict__[self.qat_attr]  # the float variable (not the property)
        if self.qat_axes is None:
            return raw
        w = fake_quantize(to_matrix(raw, self.qat_axes, ops), self.tfc_settings["bits"],
                          self.tfc_settings["group"])
        return from_matrix(w, self.qat_axes, raw.shape, ops)

    # Keras saves what these return: the latent float weights, so training can go on
    def _get_kernel_with_merged_lora(self):
        return self.__dict__[self.qat_attr], None, None

    def _get_embeddings_with_merged_lora(self):
        return self.__dict__[self.qat_attr], None, None


register_mixin(FakeQuant)


def qat(model, config: RTNConfig | GPTQConfig | QuantizeConfig | None = None, *,
        inplace: bool = False, **overrides):
    """A copy of ``model`` (unless ``inplace``: no copy of the weights; use the model returned,
    a functional or Sequential graph being rebuilt) whose selected weights train fake-quantized.

    Uses the grid of ``config`` (an `RTNConfig`): ``bits`` / ``layer_bits``, ``granularity``
    (channel or group) and ``group_size``; the scheme is affine min-max.
    """
    check_model(model, "qat", legacy_hint="tfcompress.quantize.tfmot_quantize")
    if isinstance(config, QuantizeConfig):  # the old form
        config = config.method_config()
    config = (config or RTNConfig()).for_model(model).with_overrides(**overrides)
    if config.scheme != "affine" or config.granularity == "tensor":
        raise TfcompressError(
            "qat supports scheme='affine' with granularity 'channel' or 'group', got "
            f"scheme={config.scheme!r}, granularity={config.granularity!r}"
        )
    layers = select_layers(model, types=config.layer_types, include=config.include,
                           exclude=config.exclude, method="qat")
    for path, layer in layers:
        config.quantizer(path).group_rows(matrix_shape(layer)[0])
    target = model if inplace else copy_model(model)
    plan = {}
    for path, _ in layers:  # a copy keeps the paths
        quantizer = config.quantizer(path)
        plan[path] = {"bits": quantizer.bits,
                      "group": quantizer.group_size if config.granularity == "group" else None}
    return restore_qat(target, plan)


def restore_qat(model, plan: dict, legacy: bool = False):
    """``model`` with the layers at ``plan``'s paths (``{path: {"bits", "group"}}``) made
    ``QAT<Class>`` layers (their variables copied: training goes on); a functional/Sequential
    model comes back rebuilt (`tfcompress.core.replace`; ``legacy``: loading a file written
    before issue #27, see `tfcompress.core.replace.legacy_class`)."""
    found = layers_at(model, plan)
    plan = dict(zip(found, plan.values(), strict=True))
    new = {}
    for path, layer in found.items():
        cls = compressed_class(FakeQuant, type(layer))
        new[path] = rebuilt_as(layer, legacy_class(cls) if legacy else cls,
                               {**layer.get_config(), "qat": plan[path]})
        _copy_variables(layer, new[path])
    if not legacy:
        return replace_layers(model, new)
    model = replace_layers(model, new, record=False)
    mark_state(model, "qat", plan)
    return model


register_restorer("qat", lambda model, plan: restore_qat(model, plan, legacy=True))


def _copy_variables(source, target) -> None:
    store: dict = {}
    source.save_own_variables(store)  # a QAT layer saves its latent float weights
    target.load_own_variables(store)


def strip_qat(model):
    """Write the fake-quantized weights into the float variables and drop fake quantization;
    returns the model (``model`` changed in place, or for a functional/Sequential model a
    rebuilt one sharing its other layers). Its weights now lie exactly on the grid."""
    require_keras3(model)
    plain = {}
    for path, layer in iter_layers(model):
        if isinstance(layer, FakeQuant):
            on_grid = ops.convert_to_numpy(layer.weight_value())
            layer.__dict__[layer.qat_attr].assign(on_grid)
            plain[path] = rebuilt_as(layer, layer.float_class, layer.float_config())
            _copy_variables(layer, plain[path])
    if not plain:
        raise TfcompressError(f"model {model.name!r} has no QAT layers: make it with qat()")
    unmark_state(model, "qat")  # a model loaded from a file written before issue #27
    return replace_layers(model, plain, record=False)
