"""What a model holds and what each method would touch, as one markdown table.

Example:
    >>> print(inspect_model(model))
    model 'gpt': 21,312 parameters, 19 top-level layers, 14 with a kernel
    <BLANKLINE>
    | layer | type | shape | params | sparsity | bits | methods that touch it |
    |---|---|---|---|---|---|---|
    | token_embedding | Embedding | 256x16 | 4,096 | 0.0% | 32 | prune, quantize |
    ...
"""

from __future__ import annotations

import numpy as np


def layer_rows(model) -> list[dict]:
    """One row per layer with a kernel: path, type, shape, parameters, zeros, bits, and the
    methods whose default selection takes it (prune, quantize, factorize)."""
    from tfcompress.core import iter_layers, kernel_of, select_layers
    from tfcompress.lowrank import SVDLLMConfig
    from tfcompress.prune import MagnitudeConfig
    from tfcompress.quantize import RTNConfig
    from tfcompress.quantize.storage import quantized_layout

    touched = {
        "prune": MagnitudeConfig().layer_types,
        "quantize": RTNConfig().layer_types,
        "factorize": SVDLLMConfig(rank=1).layer_types,
    }
    chosen = {m: {p for p, _ in select_layers(model, types=t, require=False)}
              for m, t in touched.items()}
    layout = quantized_layout(model)
    rows = []
    for path, layer in iter_layers(model):
        kernel = kernel_of(layer)
        if kernel is None:
            continue
        value = np.asarray(kernel.numpy()) if path not in layout else None
        bits = (layout[path]["bits"] if path in layout else
                8 if getattr(layer, "quantization_mode", None) == "int8" else
                4 if getattr(layer, "quantization_mode", None) == "int4" else
                np.dtype(value.dtype).itemsize * 8)
        size = int(np.prod(layout[path]["weight_shape"])) if path in layout else value.size
        rows.append({
            "path": path, "type": type(layer).__name__,
            "shape": tuple(layout[path]["weight_shape"]) if path in layout else value.shape,
            "params": size, "zeros": None if value is None else int(size - np.count_nonzero(value)),
            "bits": bits, "methods": [m for m in touched if path in chosen[m]],
        })
    return rows


def inspect_model(model) -> str:
    """Markdown: a header line (name, parameters, layers) and `layer_rows` as a table."""
    rows = layer_rows(model)
    lines = [f"model {model.name!r}: {model.count_params():,} parameters, "
             f"{len(model.layers)} top-level layers, {len(rows)} with a kernel", "",
             "| layer | type | shape | params | sparsity | bits | methods that touch it |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        sparsity = "–" if r["zeros"] is None else f"{r['zeros'] / max(r['params'], 1):.1%}"
        lines.append(f"| {r['path']} | {r['type']} | {'x'.join(map(str, r['shape']))} "
                     f"| {r['params']:,} | {sparsity} | {r['bits']} "
                     f"| {', '.join(r['methods']) or '–'} |")
    return "\n".join(lines)
