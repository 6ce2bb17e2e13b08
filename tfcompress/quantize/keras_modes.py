"""Keras's own ``model.quantize`` modes (int8, int4, GPTQ) behind `quantize`, for comparison.

Keras stores these itself (dtype policies), so the saved ``.keras`` shrinks and reloads
without tfcompress. Keras's GPTQ walks "sequential blocks"; for `build_gpt` models we hand
it one sub-model per transformer block (plus the head), so it sees the same calibration
windows and the same layer order as our GPTQ.
"""

from __future__ import annotations

import re

import numpy as np

from tfcompress.core.layers import iter_layers, layer_paths
from tfcompress.errors import TfcompressError


def keras_quantize(model, config, paths: list[str], batches: list | None):
    """Quantize ``model`` in place with Keras's mode for ``config.method``; returns it."""
    import keras

    chosen = set(paths)
    path_of = layer_paths(model)

    def wanted(layer) -> bool:
        return path_of.get(id(layer)) in chosen

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
    missed = [p for p, la in iter_layers(model)
              if p in chosen and not getattr(la, "quantization_mode", None)]
    if missed:
        # Keras skips layers it cannot take without a word; say which instead
        raise TfcompressError(
            f"Keras's {mode} mode left {len(missed)} of {len(chosen)} selected layers of "
            f"{type(model).__name__} {model.name!r} unquantized ({', '.join(missed[:4])}): "
            "exclude them, or use method='rtn' / 'gptq', which take any Dense, EinsumDense "
            "or Embedding")
    return model


class _NoTokenizer:
    """Keras's GPTQConfig insists on a tokenizer; token-id windows never use it."""

    def tokenize(self, text):  # pragma: no cover - only called for string datasets
        raise TypeError("calibration must be token ids")


def block_structure(model) -> dict:
    """``pre_block_layers`` / ``sequential_blocks`` for Keras's GPTQ.

    For `build_gpt` models: the embeddings, one sub-model per block and one for the head;
    otherwise the whole model as one block (Hessians from the float model).
    """
    import keras

    names = [layer.name for layer in model.layers]
    blocks = sorted({int(m.group(1)) for n in names if (m := re.match(r"block(\d+)_ln1$", n))})
    if not blocks or "final_norm" not in names:
        return {"pre_block_layers": [], "sequential_blocks": [model]}
    starts = [model.get_layer(f"block{i}_ln1").input for i in blocks]
    ends = [model.get_layer(f"block{i}_add2").output for i in blocks]
    pre = keras.Model(model.inputs, starts[0])
    subs = [keras.Model(s, e) for s, e in zip(starts, ends, strict=True)]
    subs.append(keras.Model(ends[-1], model.outputs))
    return {"pre_block_layers": [pre], "sequential_blocks": subs}
