"""Structured pruning that physically removes MLP neurons and attention heads.

Works on functional Keras 3 models of built-in layers (such as `tfcompress.models.build_gpt`):
a ``Dense`` whose output feeds only another ``Dense`` is an MLP pair whose hidden units can be
removed; a ``MultiHeadAttention`` loses whole heads. The model is rebuilt with
``keras.models.clone_model`` with narrower layers and sliced weights, so it is smaller and
faster everywhere (Keras, TFLite), not just sparse.

Example:
    >>> small = prune(model, MagnitudeConfig(pattern="neurons", sparsity=0.3))
    >>> small.get_layer("block0_mlp_in").units     # 1024 -> 717
    717
"""

from __future__ import annotations

import keras
import numpy as np

from tfcompress.core.calibration import calibrate
from tfcompress.core.compressor import Compressor
from tfcompress.core.layers import kernel_matrix, layer_paths
from tfcompress.errors import TfcompressError
from tfcompress.prune.config import MagnitudeConfig, WandaConfig
from tfcompress.prune.masks import units_to_keep


def mlp_pairs(model) -> list[tuple[object, object]]:
    """``(producer, consumer)`` Dense pairs of a functional model: the producer's output is
    read by the consumer only, so the producer's units are the consumer's inputs."""
    pairs = []
    for layer in model.layers:
        if type(layer).__name__ != "Dense" or len(layer._inbound_nodes) != 1:
            continue
        tensors = layer._inbound_nodes[0].input_tensors
        producer = tensors[0]._keras_history.operation if len(tensors) == 1 else None
        if (type(producer).__name__ == "Dense" and len(producer._outbound_nodes) == 1
                and len(producer._inbound_nodes) == 1):
            pairs.append((producer, layer))
    return pairs


def attention_layers(model) -> list:
    return [la for la in model.layers if type(la).__name__ == "MultiHeadAttention"]


def neuron_importance(producer, consumer, norms: np.ndarray | None = None) -> np.ndarray:
    """Per hidden unit: ``||W_in[:, j]|| * ||W_out[j, :]||`` (magnitude, without ``norms``)
    or ``sum_k |W_out[j, k]| * ||X_j||`` with ``norms`` the consumer's input norms (wanda)."""
    w_out = kernel_matrix(consumer)
    if norms is not None:
        return np.abs(w_out).sum(axis=1) * norms
    return np.linalg.norm(kernel_matrix(producer), axis=0) * np.linalg.norm(w_out, axis=1)


def head_importance(attention, norms: np.ndarray | None = None) -> np.ndarray:
    """Per head, from the output projection's rows of that head (grouped ``heads*head_dim``):
    their squared norms (magnitude, without ``norms``) or ``|W_out|`` weighted by ``norms``,
    its input norms (wanda)."""
    w_out = kernel_matrix(attention._output_dense)
    heads = attention.num_heads
    if norms is not None:
        rows = np.abs(w_out).sum(axis=1) * norms
    else:
        rows = np.linalg.norm(w_out, axis=1) ** 2
    return rows.reshape(heads, -1).sum(axis=1)


def _slice_like(old: np.ndarray, new_shape: tuple, keep: np.ndarray) -> np.ndarray:
    """Take ``keep`` along every axis where the narrower layer's weight is smaller."""
    for axis, (a, b) in enumerate(zip(old.shape, new_shape, strict=True)):
        if a != b:
            old = np.take(old, keep, axis=axis)
    return old


class InputNorms(Compressor):
    """``||X_j||`` of each layer's inputs as a `Compressor` (the weights are left as they are)."""

    needs = ("sq",)

    def compress_layer(self, path: str, layer, stats) -> np.ndarray:
        return stats.norms()


def prune_structured(model, config: MagnitudeConfig | WandaConfig, data=None):
    """A new, narrower model; ``model`` is not changed. Units are ranked by Wanda's scores
    from ``data`` (calibration batches) when given, else by magnitude. See the module
    docstring."""
    if type(model).__name__ not in ("Functional", "Sequential"):
        raise TfcompressError(
            f"structured pruning rebuilds functional models; {model.name!r} is a "
            f"{type(model).__name__}: use an unstructured or N:M pattern instead"
        )
    if config.pattern == "neurons":
        # unit owner -> (layer whose inputs are the units, the consumer that is narrowed too)
        units = {a: (b, b) for a, b in mlp_pairs(model) if config.selects(a.name)}
    else:
        units = {la: (la._output_dense, None) for la in attention_layers(model)
                 if config.selects(la.name)}
    if not units:
        kind = "Dense->Dense MLP pairs" if config.pattern == "neurons" else "MultiHeadAttention"
        raise TfcompressError(
            f"pattern={config.pattern!r} found no {kind} layers in {model.name!r} "
            f"(include={config.include!r}, exclude={config.exclude!r})"
        )
    inputs = {}
    if data is not None:
        path_of = layer_paths(model)
        probes = [(path_of[id(probe)], probe) for probe, _ in units.values()]
        norms = calibrate(model, probes, data, InputNorms(), sequential=False,
                          max_rows=config.max_rows, verbose=0)
        inputs = {owner: norms[path_of[id(probe)]] for owner, (probe, _) in units.items()}
    keep, consumers = {}, {}
    for owner, (_, consumer) in units.items():
        if config.pattern == "neurons":
            imp = neuron_importance(owner, consumer, inputs.get(owner))
            consumers[consumer.name] = owner.name
        else:
            imp = head_importance(owner, inputs.get(owner))
        keep[owner.name] = units_to_keep(imp, config.sparsity)

    def narrower(layer):
        cfg = layer.get_config()
        if layer.name in keep:
            cfg["units" if config.pattern == "neurons" else "num_heads"] = len(keep[layer.name])
        return layer.__class__.from_config(cfg)

    new = keras.models.clone_model(model, clone_function=narrower)
    for old_layer, new_layer in zip(model.layers, new.layers, strict=True):
        index = keep.get(old_layer.name, keep.get(consumers.get(old_layer.name)))
        for old_w, new_w in zip(old_layer.weights, new_layer.weights, strict=True):
            value = np.asarray(old_w.numpy())
            new_w.assign(value if index is None else _slice_like(value, new_w.shape, index))
    return new
