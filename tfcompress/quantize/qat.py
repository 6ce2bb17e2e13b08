"""Quantization-aware training for Keras 3: weights are fake-quantized in the forward pass
(affine min-max, per channel or group-wise, like `Quantizer`) and gradients pass straight
through the rounding, for Dense, EinsumDense (so MultiHeadAttention) and Embedding.

The QAT model is an ordinary Keras model: compile and ``fit`` it with any loss, or wrap it
in a distiller as the student (distillation-aware QAT). `strip_qat` then puts the weights on
the grid and `quantize` with the same settings stores them as codes, exactly.

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
    kernel_axes,
    matrix_shape,
    require_keras3,
    select_layers,
    to_matrix,
)
from tfcompress.core.saving import layers_at, mark_state, register_restorer, unmark_state
from tfcompress.core.validation import check_model
from tfcompress.errors import TfcompressError
from tfcompress.quantize.config import GPTQConfig, QuantizeConfig, RTNConfig
from tfcompress.quantize.storage import _float_attr, same_name_subclass


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


class _FakeQuant:
    """Mixin placed before a Keras layer class: its weight is fake-quantized when read."""

    def _qat_weight(self):
        # the layer's own class reads the kernel; this subclass's `kernel` is the fake one
        raw = getattr(self, self.qat_attr)
        w = fake_quantize(to_matrix(raw, self.qat_axes, ops), self.qat_bits, self.qat_group)
        return from_matrix(w, self.qat_axes, raw.shape, ops)

    @property
    def kernel(self):
        return self._qat_weight()

    @property
    def embeddings(self):
        return self._qat_weight()

    # Keras saves what these return: the latent float weights, so training can go on
    def _get_kernel_with_merged_lora(self):
        return getattr(self, self.qat_attr), None, None

    def _get_embeddings_with_merged_lora(self):
        return getattr(self, self.qat_attr), None, None


def qat(model, config: RTNConfig | GPTQConfig | QuantizeConfig | None = None, *,
        inplace: bool = False, **overrides):
    """A copy of ``model`` (unless ``inplace``) whose selected weights train fake-quantized.

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
                           exclude=config.exclude)
    for path, layer in layers:
        config.quantizer(path).group_rows(matrix_shape(layer)[0])
    target = model if inplace else copy_model(model)
    plan = {}
    for path, _ in layers:  # a copy keeps the paths
        quantizer = config.quantizer(path)
        plan[path] = {"bits": quantizer.bits,
                      "group": quantizer.group_size if config.granularity == "group" else None}
    restore_qat(target, plan)
    return target


def restore_qat(model, plan: dict) -> None:
    """Make the layers at ``plan``'s paths (``{path: {"bits", "group"}}``) fake-quantize, in
    place, and record the plan so ``.keras`` files reload as QAT models (training goes on)."""
    layers = layers_at(model, plan)
    plan = dict(zip(layers, plan.values(), strict=True))
    for path, layer in layers.items():
        spec = plan[path]
        layer.qat_attr = _float_attr(layer)
        layer.qat_axes = kernel_axes(layer)
        layer.qat_bits = spec["bits"]
        layer.qat_group = spec["group"]
        # same class name and config: the latent float weights save as the layer's own
        layer.__class__ = same_name_subclass(_FakeQuant, type(layer))
    mark_state(model, "qat", plan)


register_restorer("qat", restore_qat)


def strip_qat(model):
    """Write the fake-quantized weights into the float variables and drop fake quantization,
    in place; returns ``model`` (its weights now lie exactly on the quantization grid)."""
    require_keras3(model)
    stripped = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, _FakeQuant):
            on_grid = ops.convert_to_numpy(layer._qat_weight())
            getattr(layer, layer.qat_attr).assign(on_grid)
            layer.__class__ = type(layer).__mro__[2]
            stripped += 1
    if not stripped:
        raise TfcompressError(f"model {model.name!r} has no QAT layers: make it with qat()")
    unmark_state(model, "qat")
    return model
