"""Mixed precision: how much each layer's outputs suffer at each bit width, and the cheapest
assignment of bit widths that fits a size budget.

Example:
    >>> sens = sensitivity(model, calibration, bits=(2, 3, 4, 8))
    >>> layer_bits = allocate_bits(sens, sizes, budget_bits=3.5 * total_weights)
    >>> quantize(model, GPTQConfig(layer_bits=layer_bits, ...), calibration=calibration)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tfcompress.core.calibration import calibrate, calibration_batches
from tfcompress.core.compressor import Compressor
from tfcompress.core.layers import kernel_matrix, select_layers
from tfcompress.core.registry import MethodConfig
from tfcompress.core.validation import check_model
from tfcompress.errors import TfcompressError
from tfcompress.quantize.api import gptq_able
from tfcompress.quantize.config import GPTQConfig, RTNConfig
from tfcompress.quantize.gptq import output_error


class RoundingErrors(Compressor):
    """Each layer's mean squared output change under each of ``quantizers`` (``{bits:
    Quantizer}``, round-to-nearest), relative to its mean squared output, from its input
    Hessian, as a `Compressor` (the weights are left as they are)."""

    needs = ("xtx",)

    def __init__(self, quantizers: dict):
        self.quantizers = quantizers

    def compress_layer(self, path: str, layer, stats) -> dict[int, float]:
        w = kernel_matrix(layer)
        ref = output_error(stats, w, np.zeros_like(w)) or 1.0
        return {b: output_error(stats, w, q.roundtrip(w)) / ref
                for b, q in self.quantizers.items()}


def sensitivity(model, calibration, config: RTNConfig | GPTQConfig | None = None,
                bits: tuple[int, ...] = (2, 3, 4, 8)) -> dict[str, dict[int, float]]:
    """``{path: {bits: error}}``: each layer's mean squared output change when only it is
    round-to-nearest quantized at ``bits``, from its input statistics on ``calibration``
    (float model, block by block), relative to its mean squared output. Embeddings use
    their row error. ``config`` chooses the layers and grid (``bits`` replaced by each of
    ``bits``)."""
    check_model(model, "sensitivity")
    calibration = calibration_batches(calibration, model)  # checked before any work
    config = config or RTNConfig()
    if not isinstance(config, MethodConfig):  # the old QuantizeConfig
        config = config.method_config()
    config = config.for_model(model)
    layers = select_layers(model, types=config.layer_types, include=config.include,
                           exclude=config.exclude)
    quantizers = {b: replace(config, bits=b, layer_bits={}).quantizer() for b in bits}

    dense = [(p, la) for p, la in layers if gptq_able(la)]
    walk = config if isinstance(config, GPTQConfig) else GPTQConfig()  # RTN has no walk
    out = calibrate(model, dense, calibration, RoundingErrors(quantizers), blocks=walk.blocks,
                    sequential=False, max_rows=walk.max_rows, verbose=0) if dense else {}
    for path, layer in layers:
        if path not in out:  # an embedding: its "input" is one row of w: output error = row error
            w = kernel_matrix(layer)
            ref = float(np.mean(w**2)) or 1.0
            out[path] = {b: float(np.mean((w - q.roundtrip(w)) ** 2)) / ref
                         for b, q in quantizers.items()}
    return {p: out[p] for p, _ in layers}


def allocate_bits(sens: dict[str, dict[int, float]], sizes: dict[str, int],
                  budget_bits: float) -> dict[str, int]:
    """Bit width per layer minimising summed weighted error with
    ``sum(bits * sizes) <= budget_bits``: start everyone at the fewest bits, then greedily
    buy the upgrade with the best error reduction per extra bit while the budget allows."""
    if set(sens) != set(sizes):
        raise TfcompressError("sens and sizes must name the same layers")
    choice = {p: min(s) for p, s in sens.items()}
    used = sum(choice[p] * sizes[p] for p in choice)
    if used > budget_bits:
        raise TfcompressError(
            f"budget_bits={budget_bits:.0f} is below the smallest possible size {used:.0f}")
    while True:
        best = None
        for p, table in sens.items():
            higher = [b for b in table if b > choice[p]]
            if not higher:
                continue
            b = min(higher)
            cost = (b - choice[p]) * sizes[p]
            gain = (table[choice[p]] - table[b]) * sizes[p] / cost
            if used + cost <= budget_bits and (best is None or gain > best[0]):
                best = (gain, p, b, cost)
        if best is None:
            return choice
        _, p, b, cost = best
        choice[p], used = b, used + cost
