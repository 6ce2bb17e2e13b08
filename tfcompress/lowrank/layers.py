"""Keras layers that stand in for a factorized Dense/EinsumDense/Conv/Embedding layer.

- `LowRankDense`: ``y = act((x @ u) @ v + b)`` where ``u`` contracts the input axes of the
  original kernel (one for Dense, two for an attention output projection) into ``rank`` and
  ``v`` expands ``rank`` to the output axes (e.g. ``(heads, head_dim)``).
- `CPEinsumDense`: the same contraction with a CP (PARAFAC) factor per kernel axis.
- `svd_conv`, `tucker_conv`, `cp_conv`, `svd_embedding`: sequences of built-in layers.

Example:
    >>> layer = LowRankDense(rank=8, output_dims=(64,), name="mlp_in", activation="gelu")
    >>> layer.build((None, None, 32)); layer.set_factors(u, v, bias)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfcompress.core.layers import register_compressed


class _FactoredBase(keras.layers.Layer):
    """Shared config, bias and activation of the factorized stand-ins."""

    def __init__(self, rank: int, output_dims, input_rank: int = 1, use_bias: bool = True,
                 activation=None, **kwargs):
        super().__init__(**kwargs)
        self.rank = int(rank)
        self.output_dims = tuple(int(d) for d in output_dims)
        self.input_rank = int(input_rank)
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)

    def _project(self, inputs, u, v):
        """``act(x @ u @ v + b)`` on the flattened input/output axes.

        Reshape + matmul rather than einsum: TF's einsum gradient with broadcast (``...``)
        axes materializes the outer product and made training ~30x slower.
        """
        d_in = u.shape[0]
        lead = ops.shape(inputs)[: len(inputs.shape) - self.input_rank]
        x = inputs if self.input_rank == 1 else ops.reshape(inputs, (*lead, d_in))
        y = ops.matmul(ops.matmul(x, u), v)
        if len(self.output_dims) > 1:
            y = ops.reshape(y, (*lead, *self.output_dims))
        if self.use_bias:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y

    def _add_bias(self):
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=self.output_dims, initializer="zeros")

    @property
    def input_dims(self) -> tuple[int, ...]:
        """The trailing input axes contracted by the first factor (known once built)."""
        return self._input_dims

    def compute_output_shape(self, input_shape):
        return (*input_shape[: len(input_shape) - self.input_rank], *self.output_dims)

    def get_config(self):
        return {**super().get_config(), "rank": self.rank, "output_dims": list(self.output_dims),
                "input_rank": self.input_rank, "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation)
                if self.activation is not None else None}


@register_compressed
@keras.saving.register_keras_serializable(package="tfcompress")
class LowRankDense(_FactoredBase):
    """A Dense/EinsumDense layer whose kernel is the product of ``u`` and ``v``.

    ``u`` has shape ``(*input_dims, rank)``, ``v`` ``(rank, *output_dims)``; the bias
    (shape ``output_dims``) and activation behave as in the original layer.
    """

    def build(self, input_shape):
        in_dims = self._input_dims = tuple(input_shape[len(input_shape) - self.input_rank:])
        self.u = self.add_weight(name="u", shape=(*in_dims, self.rank),
                                 initializer="glorot_uniform")
        self.v = self.add_weight(name="v", shape=(self.rank, *self.output_dims),
                                 initializer="glorot_uniform")
        self._add_bias()

    def call(self, inputs):
        u = ops.reshape(self.u, (-1, self.rank))
        return self._project(inputs, u, ops.reshape(self.v, (self.rank, -1)))

    def set_factors(self, u: np.ndarray, v: np.ndarray, bias: np.ndarray | None = None) -> None:
        """Load ``(d_in, rank)`` / ``(rank, d_out)`` matrices, reshaped to the stored shapes."""
        self.u.assign(np.reshape(u, self.u.shape))
        self.v.assign(np.reshape(v, self.v.shape))
        if self.use_bias and bias is not None:
            self.bias.assign(np.reshape(bias, self.bias.shape))


@register_compressed
@keras.saving.register_keras_serializable(package="tfcompress")
class CPEinsumDense(_FactoredBase):
    """A Dense/EinsumDense layer whose kernel is a rank-``rank`` CP tensor.

    One factor ``(dim, rank)`` per kernel axis: the input factors contract the input into
    ``rank`` components, the output factors expand them to ``output_dims``.
    """

    def build(self, input_shape):
        in_dims = self._input_dims = tuple(input_shape[len(input_shape) - self.input_rank:])
        self.factor_list = [
            self.add_weight(name=f"factor_{i}", shape=(d, self.rank), initializer="glorot_uniform")
            for i, d in enumerate((*in_dims, *self.output_dims))
        ]
        self._add_bias()

    def call(self, inputs):
        n = self.input_rank
        u = _khatri_rao(self.factor_list[:n], self.rank)
        return self._project(inputs, u, ops.transpose(_khatri_rao(self.factor_list[n:],
                                                                  self.rank)))

    def set_factors(self, factors: list[np.ndarray], bias: np.ndarray | None = None) -> None:
        """Load one ``(dim, rank)`` factor per kernel axis, input axes first."""
        for var, value in zip(self.factor_list, factors, strict=True):
            var.assign(value)
        if self.use_bias and bias is not None:
            self.bias.assign(np.reshape(bias, self.bias.shape))


def _khatri_rao(factors, rank: int):
    """Column-wise Kronecker product: ``(prod(dims), rank)`` from ``(dim_i, rank)`` factors."""
    out = factors[0]
    for f in factors[1:]:
        out = ops.reshape(ops.expand_dims(out, 1) * ops.expand_dims(f, 0), (-1, rank))
    return out


def _conv_cls(rank: int, depthwise: bool = False):
    name = f"{'Depthwise' if depthwise else ''}Conv{rank}D"
    return getattr(keras.layers, name)


def _conv_geometry(conv) -> dict:
    return {"strides": conv.strides, "padding": conv.padding, "dilation_rate": conv.dilation_rate}


def _sequence(name: str, input_spec, layers, weights) -> keras.Sequential:
    seq = keras.Sequential([input_spec, *layers], name=name)
    for layer, values in zip(layers, weights, strict=True):
        layer.set_weights(values)
    return seq


def _input(conv, input_shape):
    return keras.Input(shape=tuple(input_shape[1:]), dtype=conv.compute_dtype)


def svd_conv(conv, u: np.ndarray, v: np.ndarray, input_shape) -> keras.Sequential:
    """Conv (k..., c_in, c_out) as a rank-r conv (k..., c_in, r) then a 1x1 conv (r, c_out)."""
    kernel = conv.kernel.numpy()
    rank, n = u.shape[1], kernel.ndim - 2
    cls = _conv_cls(n)
    first = cls(rank, conv.kernel_size, use_bias=False, name="spatial", **_conv_geometry(conv))
    last = cls(conv.filters, 1, use_bias=conv.use_bias, activation=conv.activation, name="mix")
    bias = [conv.bias.numpy()] if conv.use_bias else []
    return _sequence(conv.name, _input(conv, input_shape), [first, last],
                     [[u.reshape(*kernel.shape[:-1], rank)],
                      [v.reshape((1,) * n + v.shape), *bias]])


def tucker_conv(conv, core: np.ndarray, factors: list[np.ndarray], input_shape):
    """Tucker-2 conv: 1x1 (c_in -> r_in), k... (r_in -> r_out), 1x1 (r_out -> c_out)."""
    n = conv.kernel.ndim - 2
    cls = _conv_cls(n)
    f_in, f_out = factors
    ones = (1,) * n
    first = cls(f_in.shape[1], 1, use_bias=False, name="reduce")
    mid = cls(f_out.shape[1], conv.kernel_size, use_bias=False, name="core",
              **_conv_geometry(conv))
    last = cls(conv.filters, 1, use_bias=conv.use_bias, activation=conv.activation,
               name="restore")
    bias = [conv.bias.numpy()] if conv.use_bias else []
    return _sequence(conv.name, _input(conv, input_shape), [first, mid, last],
                     [[f_in.reshape(ones + f_in.shape)], [core],
                      [f_out.T.reshape(ones + f_out.T.shape), *bias]])


def cp_conv(conv, factors: list[np.ndarray], input_shape) -> keras.Sequential:
    """CP conv over (taps, c_in, c_out): 1x1 (c_in -> R), depthwise k... per component,
    1x1 (R -> c_out)."""
    n = conv.kernel.ndim - 2
    taps, f_in, f_out = factors
    rank, ones = f_in.shape[1], (1,) * n
    first = _conv_cls(n)(rank, 1, use_bias=False, name="reduce")
    mid = _conv_cls(n, depthwise=True)(conv.kernel_size, use_bias=False, name="depthwise",
                                       **_conv_geometry(conv))
    last = _conv_cls(n)(conv.filters, 1, use_bias=conv.use_bias, activation=conv.activation,
                        name="restore")
    bias = [conv.bias.numpy()] if conv.use_bias else []
    return _sequence(conv.name, _input(conv, input_shape), [first, mid, last],
                     [[f_in.reshape(ones + f_in.shape)],
                      [taps.reshape(*conv.kernel_size, rank, 1)],
                      [f_out.T.reshape(ones + f_out.T.shape), *bias]])


def svd_embedding(embedding, u: np.ndarray, v: np.ndarray) -> keras.Sequential:
    """Embedding (vocab, d) as Embedding (vocab, r) then a bias-free Dense (r -> d)."""
    rank = u.shape[1]
    small = keras.layers.Embedding(embedding.input_dim, rank, mask_zero=embedding.mask_zero,
                                   name="lookup")
    project = keras.layers.Dense(embedding.output_dim, use_bias=False, name="project")
    return _sequence(embedding.name, keras.Input(shape=(None,), dtype="int32"),
                     [small, project], [[u], [v]])
