"""Weight quantizers as pure NumPy functions: linear (affine, symmetric, LiteRT's own grid)
and non-linear (k-means codebooks, powers of two, NF4), per tensor, per output channel or
group-wise along the input axis.

Every quantizer maps a ``(d_in, d_out)`` matrix to a `QTensor`: integer ``codes`` in
``[0, 2**bits)`` plus the few floats that decode them,
``w_hat[i, j] = levels[j or 0, codes[i, j]] * scale[g(i), j] + offset[g(i), j]``
where ``g(i)`` is the group of input row ``i``.

Example:
    >>> q = Quantizer("affine", bits=4, granularity="group", group_size=32)
    >>> qt = q.quantize(w)                 # codes + scales
    >>> w_hat = q.dequantize(qt)           # |w - w_hat| <= step / 2
    >>> q.storage_bits(w.shape) / w.size   # bits per weight, scales included
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from tfcompress.errors import TfcompressError

SCHEMES = ("affine", "symmetric", "litert", "kmeans", "log2", "nf4")
GRANULARITIES = ("tensor", "channel", "group")
FLOAT_BITS = 32  # scales, offsets and codebook entries are stored as float32
LITERT_MIN_BOUND = 1e-9  # ai_edge_quantizer's floor on a block's abs-max (no zero scale)


def litert_scale(amax: np.ndarray, bits: int, blockwise: bool) -> np.ndarray:
    """The scale ai_edge_quantizer gives a symmetric block (or channel) of abs-max ``amax``:
    ``max(amax, 1e-9) / (2**(bits-1) - 1)`` in float32; blockwise scales are stored as
    float16 after rounding to bfloat16's 8-bit significand, so they are rounded that way here
    (scales below float16's range become 0: every weight of that block decodes to 0).

    Example:
        >>> litert_scale(np.float32([0.7]), 4, blockwise=True)    # 0.1 on bf16's grid
        array([0.10009766], dtype=float32)
    """
    import ml_dtypes

    scale = np.maximum(np.asarray(amax, np.float32), np.float32(LITERT_MIN_BOUND)) / np.float32(
        2 ** (bits - 1) - 1)
    if blockwise:
        scale = scale.astype(ml_dtypes.bfloat16).astype(np.float16)
    return scale.astype(np.float32)


def litert_codes(x: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes ``rint(x / scale)`` in float32, clipped as ai_edge_quantizer clips: the
    full range ``[-2**(bits-1), 2**(bits-1) - 1]`` below 8 bits (-8..7 for int4), the narrow
    ``[-127, 127]`` at 8; a zero scale gives code 0."""
    scale = np.asarray(scale, np.float32)
    u = np.divide(np.asarray(x, np.float32), np.where(scale > 0, scale, np.float32(1)))
    lo = -(2 ** (bits - 1)) + (1 if bits >= 8 else 0)
    return np.where(scale > 0, np.clip(np.rint(u), lo, 2 ** (bits - 1) - 1), 0).astype(np.int32)


def affine_codes(x: np.ndarray, x_min, x_max, bits: int) -> np.ndarray:
    """Affine min-max codes ``round((x - x_min) / (x_max - x_min) * (2**bits - 1))``.

    Where ``x_max == x_min`` every value is that constant and gets code 0 (no division by 0).
    """
    span = np.asarray(x_max, np.float64) - np.asarray(x_min, np.float64)
    safe = np.where(span > 0, span, 1.0)
    codes = np.round((x - x_min) / safe * (2**bits - 1))
    return np.clip(np.where(span > 0, codes, 0), 0, 2**bits - 1).astype(np.int32)


def nf4_levels() -> np.ndarray:
    """The 16 NormalFloat-4 levels of QLoRA (Dettmers et al. 2023), built from normal quantiles.

    8 positive and 7 negative quantiles of N(0, 1) (outer quantile 0.9677) plus an exact 0,
    normalised to [-1, 1].
    """
    offset, ppf = 0.9677083, NormalDist().inv_cdf
    pos = [ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    levels = np.sort(np.array(pos + [0.0] + neg))
    return (levels / np.abs(levels).max()).astype(np.float32)


def log2_levels(bits: int) -> np.ndarray:
    """``2**bits`` sorted levels ``0, ±1, ±1/2, ±1/4, ...`` (one extra negative power last)."""
    n = 2 ** (bits - 1) - 1
    powers = 2.0 ** -np.arange(n + 1)
    return np.sort(np.concatenate([[0.0], powers[:n], -powers])).astype(np.float32)


def nearest_level(u: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``levels`` for every value of ``u``."""
    mids = (levels[1:] + levels[:-1]) / 2
    return np.searchsorted(mids, u).astype(np.int32)


def kmeans_1d(x: np.ndarray, k: int, iters: int = 25) -> np.ndarray:
    """Lloyd's k-means on scalars from an evenly spaced start; returns ``k`` sorted centroids.

    Each step assigns to the nearest centroid then moves centroids to their means, so the
    squared error never rises above that of the initial grid; empty clusters keep their place.
    """
    x = np.asarray(x, np.float64).ravel()
    centroids = np.linspace(x.min(), x.max(), k)
    for _ in range(iters):
        idx = nearest_level(x, centroids)
        sums = np.bincount(idx, weights=x, minlength=k)
        counts = np.bincount(idx, minlength=k)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(moved, centroids):
            break
        centroids = np.sort(moved)
    return centroids


@dataclass
class QTensor:
    """Quantized ``(d_in, d_out)`` matrix: codes and what decodes them.

    ``scale``/``offset`` have shape ``(n_groups, d_out)`` or ``(1, 1)``; ``levels`` is
    ``(1, 2**bits)`` or one codebook per output channel ``(d_out, 2**bits)``.
    """

    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None
    levels: np.ndarray
    bits: int
    group_rows: int

    def dequantize(self) -> np.ndarray:
        d_out = self.codes.shape[1]
        if self.levels.shape[0] == 1:
            values = self.levels[0][self.codes]
        else:
            values = self.levels[np.arange(d_out)[None, :], self.codes]
        w = values * np.repeat(self.scale, self.group_rows, axis=0)[: len(self.codes)]
        if self.offset is not None:
            w = w + np.repeat(self.offset, self.group_rows, axis=0)[: len(self.codes)]
        return w.astype(np.float32)

    def storage_bits(self) -> int:
        floats = self.scale.size + self.levels.size
        floats += 0 if self.offset is None else self.offset.size
        return int(self.codes.size * self.bits + floats * FLOAT_BITS)


@dataclass(frozen=True)
class Quantizer:
    """A weight quantizer: ``scheme`` with ``bits`` per weight at a ``granularity``.

    Schemes: ``affine`` (asymmetric min-max), ``symmetric`` (abs-max, zero exact),
    ``litert`` (LiteRT's own symmetric grid, bit for bit what ai_edge_quantizer computes:
    `litert_scale`, `litert_codes`; with ``bits=4, granularity="group", group_size=32`` it is
    the blockwise int4 of ``export_llm(mode="int4")``, which then keeps the codes exactly),
    ``kmeans`` (a learned codebook per tensor or channel), ``log2`` (powers of two times an
    abs-max scale), ``nf4`` (NormalFloat-4 levels times an abs-max scale; bits must be 4).
    Granularity: one set of parameters per ``tensor``, per output ``channel``, or per
    ``group`` of ``group_size`` input rows and output channel. ``group_size`` must divide
    the input axis unless ``ragged=True``, which ends the axis with one shorter group.
    """

    scheme: str = "affine"
    bits: int = 8
    granularity: str = "channel"
    group_size: int | None = None
    kmeans_iters: int = 25
    ragged: bool = False

    def __post_init__(self):
        validate(self.scheme, self.bits, self.granularity, self.group_size)

    # -- parameters of one block of rows ------------------------------------------------
    def fit(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(scale, offset, levels) for ``block`` (rows, d_out), reduced over rows (and
        over columns for the ``tensor`` granularity)."""
        axis = None if self.granularity == "tensor" else 0
        keep = {"axis": axis, "keepdims": True}
        b = np.asarray(block, np.float64)
        if self.scheme == "affine":
            lo, hi = b.min(**keep), b.max(**keep)
            span = hi - lo
            scale = np.where(span > 0, span, 1.0) / (2**self.bits - 1)
            return scale, lo, np.arange(2**self.bits, dtype=np.float64)[None]
        if self.scheme == "kmeans":
            if axis is None:
                return np.ones((1, 1)), None, kmeans_1d(b, 2**self.bits, self.kmeans_iters)[None]
            books = [kmeans_1d(b[:, j], 2**self.bits, self.kmeans_iters) for j in
                     range(b.shape[1])]
            return np.ones((1, 1)), None, np.stack(books)
        if self.scheme == "litert":
            amax = np.abs(np.asarray(block, np.float32)).max(**keep)
            levels = np.arange(2**self.bits, dtype=np.float64) - 2 ** (self.bits - 1)
            return (litert_scale(amax, self.bits, self.granularity == "group"), None,
                    levels[None])
        amax = np.abs(b).max(**keep)
        amax = np.where(amax > 0, amax, 1.0)
        if self.scheme == "symmetric":
            qmax = 2 ** (self.bits - 1) - 1
            levels = np.arange(2**self.bits, dtype=np.float64) - 2 ** (self.bits - 1)
            return amax / qmax, None, levels[None]
        levels = nf4_levels() if self.scheme == "nf4" else log2_levels(self.bits)
        return amax, None, levels[None].astype(np.float64)

    def encode(self, rows: np.ndarray, scale, offset, levels) -> np.ndarray:
        """Codes of ``rows`` (n, d_out) under fitted parameters (nearest level)."""
        if self.scheme == "litert":  # codes index the levels -2**(bits-1) ..
            return litert_codes(rows, scale, self.bits) + 2 ** (self.bits - 1)
        u = (rows - (0.0 if offset is None else offset)) / scale
        if self.scheme == "affine":
            return np.clip(np.round(u), 0, 2**self.bits - 1).astype(np.int32)
        if self.scheme == "symmetric":
            qmax = 2 ** (self.bits - 1) - 1
            return (np.clip(np.round(u), -qmax, qmax) + 2 ** (self.bits - 1)).astype(np.int32)
        if levels.shape[0] == 1:
            return nearest_level(u, levels[0])
        return np.stack([nearest_level(u[:, j], levels[j]) for j in range(u.shape[1])], 1)

    # -- whole matrices ---------------------------------------------------------------
    def group_rows(self, d_in: int) -> int:
        """Rows sharing one set of parameters. With ``ragged`` the last group may be shorter
        (576 rows in groups of 128: 4 x 128 + 64)."""
        if self.granularity != "group":
            return d_in
        if d_in % self.group_size and not self.ragged:
            raise TfcompressError(
                f"group_size={self.group_size} must divide the input axis ({d_in} rows); "
                f"divisors that work: {[g for g in (16, 32, 64, 128, 256) if d_in % g == 0]}, "
                "or pass ragged=True to end the axis with a shorter group"
            )
        return min(self.group_size, d_in)

    def quantize(self, w: np.ndarray) -> QTensor:
        """Round-to-nearest quantization of a ``(d_in, d_out)`` matrix."""
        w = np.asarray(w, np.float64)
        if w.ndim != 2:
            raise TfcompressError(f"w must be a (d_in, d_out) matrix, got shape {w.shape}")
        g = self.group_rows(w.shape[0])
        starts = range(0, w.shape[0], g)
        parts = [self.fit(w[i : i + g]) for i in starts]
        codes = np.concatenate(
            [self.encode(w[i : i + g], *p) for i, p in zip(starts, parts, strict=True)])
        return self.pack_params(codes, parts, g)

    def pack_params(self, codes: np.ndarray, parts: list, group_rows: int) -> QTensor:
        """A `QTensor` from codes and the per-group ``fit`` results."""
        scale = np.concatenate([p[0] for p in parts]).astype(np.float32)
        offset = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
        return QTensor(codes.astype(np.uint8), scale,
                       None if offset is None else offset.astype(np.float32),
                       parts[0][2].astype(np.float32), self.bits, group_rows)

    def dequantize(self, qt: QTensor) -> np.ndarray:
        return qt.dequantize()

    def roundtrip(self, w: np.ndarray) -> np.ndarray:
        """``dequantize(quantize(w))``: the matrix the quantized model computes with."""
        return self.quantize(w).dequantize()

    def storage_bits(self, shape: tuple[int, int]) -> int:
        """Bits to store a matrix of ``shape``: codes plus scales/offsets/codebooks
        (the same count as ``quantize(w).storage_bits()``)."""
        d_in, d_out = shape
        per = 1 if self.granularity == "tensor" else d_out
        n_params = -(-d_in // self.group_rows(d_in)) * per
        scales = 1 if self.scheme == "kmeans" else n_params
        offsets = n_params if self.scheme == "affine" else 0
        levels = (per if self.scheme == "kmeans" else 1) * 2**self.bits
        return int(d_in * d_out * self.bits + (scales + offsets + levels) * FLOAT_BITS)

    def get_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> Quantizer:
        return cls(**config)


def validate(scheme: str, bits: int, granularity: str, group_size: int | None) -> None:
    """Raise `TfcompressError` naming the bad argument; nothing else."""
    if scheme not in SCHEMES:
        raise TfcompressError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if not isinstance(bits, int | np.integer) or not 2 <= bits <= 8:
        raise TfcompressError(f"bits must be an integer from 2 to 8, got {bits!r}")
    if scheme == "nf4" and bits != 4:
        raise TfcompressError(f"scheme='nf4' has 16 levels: bits must be 4, got {bits}")
    if granularity not in GRANULARITIES:
        raise TfcompressError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "group":
        if not isinstance(group_size, int | np.integer) or group_size < 1:
            raise TfcompressError(
                f"group_size must be a positive integer with granularity='group', got "
                f"{group_size!r}"
            )
        if scheme == "kmeans":
            raise TfcompressError(
                "scheme='kmeans' learns one codebook per tensor or channel: use "
                "granularity='tensor' or 'channel'"
            )
    elif group_size is not None:
        raise TfcompressError(
            f"group_size={group_size} needs granularity='group' (got {granularity!r})"
        )
