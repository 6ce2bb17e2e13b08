"""Keras's own ``model.quantize`` modes (int8, int4, GPTQ) behind `quantize`, for comparison.

Keras stores these itself (dtype policies), so the saved ``.keras`` shrinks. Keras 3.15
cannot reload int8/int4 layers nested in a ``MultiHeadAttention`` ("Layer 'key' expected 2
variables, but received 0"), so for int8/int4 those get tfcompress's code storage with
Keras's own formula (abs-max symmetric per output channel, or per block for int4): the file
reloads (after ``import tfcompress``) with the same outputs. Keras's GPTQ refuses them (its
file would not reload): exclude them, or use ``method="gptq"``. A subclassed model is rebuilt
by its own ``__init__`` on load, with float layers that cannot take Keras's int8/int4
variables (Keras's own ``model.quantize`` writes a file that does not load): all its layers
get the same code storage, and Keras's GPTQ is refused.

Keras's GPTQ walks "sequential blocks": we hand it one sub-model per block that
`tfcompress.core.find_blocks` finds (plus the head), so it sees the same calibration windows
and the same blocks as our GPTQ.
"""

from __future__ import annotations

import numpy as np

from tfcompress.core.blocks import cut_graph, find_blocks, graph_of
from tfcompress.core.layers import iter_layers, kernel_matrix, layer_paths
from tfcompress.errors import TfcompressError
from tfcompress.quantize.quantizers import Quantizer
from tfcompress.quantize.storage import store_codes


def keras_quantize(model, config, paths: list[str], batches: list | None):
    """Quantize ``model`` in place with Keras's mode for ``config.method``; returns it."""
    import keras

    chosen = set(paths)
    path_of = layer_paths(model)

    def wanted(layer) -> bool:
        return path_of.get(id(layer)) in chosen

    mode = config.method.removeprefix("keras_")
    inside = attention_paths(model) & chosen
    if graph_of(model) is None:  # subclassed: no saved layer config carries Keras's policy
        if mode == "gptq":
            raise TfcompressError(
                f"method='keras_gptq' on subclassed {type(model).__name__} {model.name!r}: "
                "Keras rebuilds its layers in float from __init__ on load, so Keras's GPTQ "
                "file would not load; use method='gptq' (tfcompress's, saved with the model)")
        inside = set(chosen)
    if mode in ("int8", "int4"):
        chosen -= inside
    if mode in ("int8", "int4") and not chosen:
        pass  # every selected layer takes the code storage below
    elif mode == "int8":
        model.quantize("int8", filters=wanted)
    elif mode == "int4":
        block = config.group_size if config.granularity == "group" else -1
        model.quantize(config=keras.quantizers.Int4QuantizationConfig(block_size=block),
                       filters=wanted)
    else:
        windows = np.concatenate([np.asarray(b) for b in batches])
        gptq = keras.quantizers.GPTQConfig(
            dataset=list(windows), tokenizer=_NoTokenizer(), weight_bits=config.bits,
            num_samples=len(windows), sequence_length=windows.shape[1],
            hessian_damping=config.damping,
            group_size=config.group_size if config.granularity == "group" else -1,
            symmetric=config.scheme == "symmetric", activation_order=config.act_order,
            quantization_layer_structure=block_structure(model),
        )
        model.quantize("gptq", config=gptq, filters=wanted)
        for _, layer in iter_layers(model):
            # the config holds the calibration windows and sub-models of this very model,
            # which would make saving recurse forever; the dtype policy is what reloads
            if getattr(layer, "quantization_config", None) is not None:
                layer.quantization_config = None
    missed = [p for p, la in iter_layers(model)
              if p in chosen and not getattr(la, "quantization_mode", None)]
    if missed:
        # Keras skips layers it cannot take without a word; say which instead
        raise TfcompressError(
            f"Keras's {mode} mode left {len(missed)} of {len(chosen)} selected layers of "
            f"{type(model).__name__} {model.name!r} unquantized ({', '.join(missed[:4])}): "
            "exclude them, or use method='rtn' / 'gptq', which take any Dense, EinsumDense "
            "or Embedding")
    if mode in ("int8", "int4") and inside:
        block = None if mode == "int8" or config.granularity != "group" else config.group_size
        model = _store_like_keras(model, inside, 8 if mode == "int8" else 4, block)
    return model


def attention_paths(model) -> set[str]:
    """Paths of the layers nested in a ``MultiHeadAttention`` (KerasHub's subclasses too)."""
    import keras

    path_of = layer_paths(model)
    return {path_of[id(sub)] for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.MultiHeadAttention)
            for sub in layer._flatten_layers(include_self=False)}


def _store_like_keras(model, paths: set[str], bits: int, block: int | None):
    """Keras's int8/int4 weight formula (abs-max symmetric; per channel or per block of
    ``block`` input rows) into tfcompress code storage, for ``paths``."""
    quantizer = Quantizer("symmetric", bits, "group" if block else "channel", block,
                          ragged=True)
    layers = dict(iter_layers(model))
    return store_codes(model, {p: quantizer.quantize(kernel_matrix(layers[p]))
                               for p in sorted(paths)})


class _NoTokenizer:
    """Keras's GPTQConfig insists on a tokenizer; token-id windows never use it."""

    def tokenize(self, text):  # pragma: no cover - only called for string datasets
        raise TypeError("calibration must be token ids")


def block_structure(model) -> dict:
    """``pre_block_layers`` / ``sequential_blocks`` for Keras's GPTQ.

    The blocks `tfcompress.core.find_blocks` finds, when each reads and writes one tensor:
    the layers before them, one sub-model per block and one for the head; otherwise the
    whole model as one block (Hessians from the float model).
    """
    import keras

    plan = find_blocks(model)
    whole = {"pre_block_layers": [], "sequential_blocks": [model]}
    if plan.host is None or plan.host is not graph_of(model) or not plan.groups:
        return whole
    graph = cut_graph(plan)
    if len(graph.side) != 1 or any(len(t) != 1 for t in graph.inputs + graph.outputs):
        return whole
    pre = keras.Model(model.inputs, graph.side[0])
    subs = [keras.Model(i[0], o[0]) for i, o in zip(graph.inputs, graph.outputs, strict=True)]
    subs.append(keras.Model(graph.outputs[-1][0], model.outputs))
    return {"pre_block_layers": [pre], "sequential_blocks": subs}
