"""``export_llm(mode="int4", budget_mb=...)``: int8 for the layers int4 hurts most, within a
file size (what llama.cpp's Q4_K_M does by hand with its attention v and MLP down matrices).

Sensitivity is measured, per linear map, as the squared output error per token that LiteRT's
int4 grid (symmetric, blocks of 32) adds over its int8 per-channel grid, on calibration
text: ``tr(D^T X^T X D) / n`` with ``D`` the rounding change of the weights and ``X`` the
map's inputs, captured while the `Decoder`'s own cached forward pass runs the text. That is
the error one layer alone adds to its output when it goes int4 (the quantity GPTQ
minimises), at the cost of one forward pass: the loss increase of each layer alone would
take one forward pass per layer (210 for SmolLM2). It is absolute, not relative: every
map's error lands in the same residual stream, and a relative one would rate a map with
small outputs as highly as one with large. Then `choose_int8` buys int8 for the maps with
the most error saved per extra byte (`tfcompress.quantize.mixed.allocate_bits`'s greedy)
while the estimated file (`int4_bytes`, `int8_bytes`, plus what the graph itself takes)
stays within the budget.

A quantized model's maps (GPTQ on LiteRT's grid) are measured against the float weights they
came from (`export_llm`'s ``float_model``, read by `float_weights`): the int4 error is that of
the codes the file keeps, and a map bought int8 is rounded from the float weights, not from
its int4 values (which int8 would only round again).

Example:
    >>> plan = budget_plan(dec, budget_mb=105.5, calibration=ids,
    ...                    floats=float_weights(dec, decoder_of(float_model)))
    >>> plan.choose(float_file_bytes)["int8"]      # the maps kept at int8
    ['29.down', '0.v', ...]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tfcompress.core.progress import print_msg
from tfcompress.errors import TfcompressError
from tfcompress.export.modes import INT4_BLOCK

MB = 1e6
# how sensitivity is measured (written into the report and llm.json)
MEASURE = ("squared output error per token added by LiteRT's int4 grid over int8 per channel, "
           "tr(D^T X^T X D) / n on the calibration text's inputs to each map")


def int4_bytes(d_in: int, d_out: int) -> int:
    """Bytes of a ``(d_in, d_out)`` matmul in LiteRT's blockwise int4: two codes a byte, one
    float16 scale per block of `INT4_BLOCK` inputs and output.

    Example:
        >>> int4_bytes(64, 10)   # 640 / 2 + 2 blocks x 10 outputs x 2 bytes
        360
    """
    return d_in * d_out // 2 + (d_in // INT4_BLOCK) * d_out * 2


def int8_bytes(d_in: int, d_out: int) -> int:
    """Bytes of a ``(d_in, d_out)`` matmul in int8 per output channel: one byte a weight, a
    float32 scale and an int64 zero point (the flatbuffer's quantization fields) per output.

    Example:
        >>> int8_bytes(64, 10)   # 640 + 10 x (4 + 8)
        760
    """
    return d_in * d_out + d_out * 12


def weight_error(xtx: np.ndarray, n: int, w: np.ndarray, w_hat: np.ndarray) -> float:
    """Squared output error per input row, ``tr(D^T X^T X D) / n`` with ``D = w - w_hat``:
    the mean of ``||x w - x w_hat||^2`` over the ``n`` rows whose ``X^T X`` is ``xtx``.

    Example:
        >>> weight_error(np.eye(2), 2, np.eye(2), np.zeros((2, 2)))   # rows e1, e2: x D = x
        1.0
    """
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.sum(d * (np.asarray(xtx, np.float64) @ d))) / max(int(n), 1)


def layer_sensitivity(xtx: np.ndarray, n: int, w: np.ndarray, reference: np.ndarray | None = None,
                      kept: bool = False) -> dict[int, float]:
    """``{4: error, 8: error}``: `weight_error` against ``reference`` (the map's float weights
    before quantization; default ``w``) of the int4 weights the file holds (``w``, the map's
    exported ``(d_in, d_out)`` weights, as they are where ``kept``: codes on LiteRT's int4 grid
    the file keeps exactly; else rounded onto LiteRT's int4 blocks) and of ``reference``
    rounded onto LiteRT's int8 per-channel grid (`Quantizer` ``"litert"``).

    Example:
        >>> layer_sensitivity(xtx, n, gptq_w, reference=float_w, kept=True)[4]  # GPTQ's error
    """
    from tfcompress.quantize.quantizers import Quantizer

    reference = w if reference is None else reference
    int4 = w if kept else Quantizer("litert", 4, "group", group_size=INT4_BLOCK).roundtrip(w)
    int8 = Quantizer("litert", 8, "channel").roundtrip(reference)
    return {4: weight_error(xtx, n, reference, int4), 8: weight_error(xtx, n, reference, int8)}


def kept_exactly(dec, name: str) -> bool:
    """Whether the int4 file keeps the map ``name``'s weights as they are: signed codes in
    int4's range in blocks of `INT4_BLOCK` (`tfcompress.export.llm_int4`)."""
    grid = dec.codes.get(name)
    return grid is not None and grid[2] == INT4_BLOCK and -8 <= grid[0].min() \
        and grid[0].max() <= 7


def choose_int8(sens: dict[str, dict[int, float]], extra: dict[str, int],
                spare: float) -> list[str]:
    """The maps to keep at int8: the most error saved per extra byte first, while the extra
    bytes fit in ``spare``. ``sens``: `layer_sensitivity` per map; ``extra``: int8 bytes
    minus int4 bytes per map. A map int8 does not improve (one already on the int4 grid)
    is never bought.

    Example:
        >>> choose_int8({"a": {4: 9.0, 8: 1.0}, "b": {4: 4.0, 8: 0.0}}, {"a": 10, "b": 2}, 11)
        ['b']
    """
    from tfcompress.quantize.mixed import allocate_bits

    gaining = [name for name in sens if sens[name][4] > sens[name][8]]
    if not gaining:
        return []
    # allocate_bits minimises sum(error * size) with sum(bits * size) <= budget: a size of
    # extra / 4 makes going 4 -> 8 bits cost the map's extra bytes, and error / size keeps
    # each map's error absolute
    sizes = {name: extra[name] / 4 for name in gaining}
    per = {name: {b: e / sizes[name] for b, e in sens[name].items()} for name in gaining}
    choice = allocate_bits(per, sizes, 4 * sum(sizes.values()) + spare)
    return [name for name in sorted(gaining, key=lambda k: (sens[k][8] - sens[k][4]) / extra[k])
            if choice[name] == 8]


def input_stats(dec, calibration: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    """``{map: (X^T X, rows)}`` of each linear map's inputs while ``dec``'s cached forward
    pass (the one the bundle runs) reads each row of ``calibration`` (token ids
    ``(windows, n)``) from an empty cache."""
    import tensorflow as tf

    from tfcompress.export import llm_graph

    stats: dict[str, list] = {}
    original = llm_graph._apply

    def recording(tf_, weights, name, x):
        rows = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
        entry = stats.setdefault(name, [0.0, 0])
        entry[0] = entry[0] + (rows.T @ rows).astype(np.float64)
        entry[1] += len(rows)
        return original(tf_, weights, name, x)

    llm_graph._apply = recording  # the maths stay the bundle's; only the inputs are read
    try:
        for window in np.asarray(calibration, np.int32):
            n = len(window)
            caches = [tf.zeros((1, dec.n_kv_heads, n, dec.head_dim))] * dec.n_layers
            llm_graph.cached_forward(dec, dec.weights, window[None], np.arange(n, dtype=np.int32),
                                     caches, caches, logits=False)
    finally:
        llm_graph._apply = original
    return {name: (xtx, rows) for name, (xtx, rows) in stats.items()}


@dataclass
class BudgetPlan:
    """What `budget_plan` measured; `choose` turns it into the int8 maps once the float
    file's size (its graph's own bytes) is known."""

    budget_bytes: int
    sens: dict[str, dict[int, float]]
    extra: dict[str, int]
    weight_bytes: int  # every weight stored as mode="int4" stores it, all maps int4
    float_weight_bytes: int  # the same weights in float32
    # the quantized maps' float weights (`float_weights`): an int8 map is rounded from them
    floats: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    report: dict = field(default_factory=dict)

    def choose(self, float_file_bytes: int, over: int = 0) -> dict:
        """``float_file_bytes``: the float32 flatbuffer's size; what it holds beyond the
        float weights (graph, constants) is in the int4 file too. ``over``: bytes a file
        made from an earlier choice exceeded the budget by (taken off the spare)."""
        graph = max(float_file_bytes - self.float_weight_bytes, 0) + over
        base = graph + self.weight_bytes
        if base > self.budget_bytes:
            raise TfcompressError(
                f"budget_mb={self.budget_bytes / MB:g} is below the all-int4 bundle "
                f"(~{base / MB:.3f} MB with its graph): give at least that")
        int8 = choose_int8(self.sens, self.extra, self.budget_bytes - base)
        self.report = {
            "budget_mb": self.budget_bytes / MB,
            "estimated_mb": (base + sum(self.extra[n] for n in int8)) / MB,
            "all_int4_estimated_mb": base / MB, "sensitivity": MEASURE,
            "int8": int8,
            # int8 maps rounded from float_model's weights (the others from the exported ones)
            "int8_from_float": [name for name in int8 if name in self.floats],
            "layers": {name: 8 if name in int8 else 4 for name in self.sens},
            "int4_error": {name: s[4] for name, s in self.sens.items()},
            "int8_error": {name: s[8] for name, s in self.sens.items()},
        }
        return self.report


def _stored_bytes(dec) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """``(int4-mode weight bytes, float32 weight bytes, {map: (d_in, d_out)} of the maps
    that can go int8)``: maps of one matrix go int4 (or int8), the token table, an untied
    head and a rotated model's ``final_mix`` int8 per row, everything else float32."""
    int4_total = float_total = 0
    maps = {}
    for name, value in dec.weights.items():
        mats = value if isinstance(value, list) else [value]
        float_total += 4 * sum(int(np.size(m)) for m in mats)
        if name in ("embed", "pos_embed"):  # (rows, d): EMBEDDING_LOOKUPs, int8 per row
            int4_total += int8_bytes(mats[0].shape[1], mats[0].shape[0])
        elif name in ("head.w", "final_mix.w"):  # int8 per channel in every int4 bundle
            int4_total += int8_bytes(*mats[0].shape)
        elif name.endswith(".w"):
            int4_total += sum(int4_bytes(*m.shape) for m in mats)
            if len(mats) == 1:
                maps[name[:-2]] = tuple(mats[0].shape)
        else:
            int4_total += 4 * sum(int(np.size(m)) for m in mats)
    return int4_total, float_total, maps


def check_budget(dec, budget_mb) -> int:
    """``budget_mb`` in bytes, refused when not a positive number or below the weights of
    the all-int4 file (before any work)."""
    if isinstance(budget_mb, bool) or not isinstance(budget_mb, int | float | np.number) \
            or not np.isfinite(budget_mb) or budget_mb <= 0:
        raise TfcompressError(f"budget_mb must be a positive number of megabytes (1e6 bytes), "
                              f"got {budget_mb!r}")
    weights, _, _ = _stored_bytes(dec)
    if budget_mb * MB < weights:
        raise TfcompressError(f"budget_mb={budget_mb} is below the all-int4 bundle's weights "
                              f"alone ({weights / MB:.3f} MB): give at least that, or no "
                              "budget_mb for plain int4")
    return int(budget_mb * MB)


def float_weights(dec, float_dec) -> dict[str, np.ndarray]:
    """The float weights (``(d_in, d_out)``) in ``float_dec`` (`export_llm`'s ``float_model``)
    of each of ``dec``'s quantized maps, checked to be float and of the same shape."""
    if float_dec.quantized:
        raise TfcompressError(f"float_model must be the float model that model was quantized "
                              f"from, got one with quantized maps {list(float_dec.quantized)[:4]}")
    out = {}
    for name in dec.quantized:
        mats = [np.shape(m) for m in dec.weights.get(f"{name}.w", [])]
        theirs = [np.shape(m) for m in float_dec.weights.get(f"{name}.w", [])]
        if len(mats) != 1 or theirs != mats:
            raise TfcompressError(f"float_model must have model's linear maps: {name!r} is "
                                  f"{theirs or 'missing'} there, {mats} in model")
        out[name] = np.asarray(float_dec.weights[f"{name}.w"][0], np.float32)
    return out


def budget_plan(dec, budget_mb: float, calibration: np.ndarray, verbose: int = 0,
                floats: dict[str, np.ndarray] | None = None) -> BudgetPlan:
    """Measure each map's sensitivity on ``calibration`` (token ids ``(windows, n)``) for
    `export_llm`'s ``budget_mb`` (checked by `check_budget` first); ``floats``: quantized
    maps' float weights (`float_weights`), which their errors are measured against and an int8
    map is rounded from."""
    budget = check_budget(dec, budget_mb)
    floats = floats or {}
    weights, float_bytes, maps = _stored_bytes(dec)
    stats = input_stats(dec, calibration)
    sens = {}
    for name in maps:
        if name not in stats:
            continue  # a user layer's own callable: its inputs are not seen, it stays int4
        xtx, n = stats[name]
        sens[name] = layer_sensitivity(xtx, n, dec.weights[f"{name}.w"][0], floats.get(name),
                                       kept_exactly(dec, name))
    if verbose:
        print_msg(f"export_llm: int4/int8 sensitivity of {len(sens)} maps measured on "
                  f"{int(np.size(calibration))} calibration tokens")
    extra = {name: int8_bytes(*maps[name]) - int4_bytes(*maps[name]) for name in sens}
    return BudgetPlan(budget, sens, extra, weights, float_bytes, floats)
