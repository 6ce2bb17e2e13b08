"""Keras's own ``model.quantize`` modes (int8, int4, GPTQ) behind `quantize`, for comparison.

Keras stores these itself (dtype policies), so the saved ``.keras`` shrinks and reloads
without tfcompress. Keras's GPTQ walks "sequential blocks": we hand it one sub-model per
block that `tfcompress.core.find_blocks` finds (plus the head), so it sees the same
calibration windows and the same blocks as our GPTQ.
"""

from __future__ import annotations

import numpy as np

from tfcompress.core.blocks import cut_graph, find_blocks, graph_of
from tfcompress.core.layers import layer_path


def keras_quantize(model, config, paths: list[str], batches: list | None):
    """Quantize ``model`` in place with Keras's mode for ``config.method``; returns it."""
    import keras

    chosen = set(paths)

    def wanted(layer) -> bool:
        return layer_path(layer) in chosen

    mode = config.method.removeprefix("keras_")
    if mode == "int8":
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
    return model


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
