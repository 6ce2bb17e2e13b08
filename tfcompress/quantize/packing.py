"""Two 4-bit codes per byte: pack in NumPy when quantizing, unpack in the graph when running.

Example:
    >>> packed = pack_int4(codes)          # (rows, cols) codes < 16 -> (ceil(rows/2), cols) uint8
    >>> np.array_equal(unpack_int4_np(packed, len(codes)), codes)
    True
"""

from __future__ import annotations

import numpy as np

from tfcompress.errors import TfcompressError


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Pack codes in ``[0, 16)`` along axis 0: row ``2i`` in the low nibble, ``2i+1`` high."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() > 15):
        raise TfcompressError(
            f"codes must lie in [0, 15] to pack two per byte, got [{codes.min()}, {codes.max()}]"
        )
    if len(codes) % 2:
        codes = np.concatenate([codes, np.zeros_like(codes[:1])])
    c = codes.astype(np.uint8)
    return (c[0::2] | (c[1::2] << 4)).astype(np.uint8)


def unpack_int4_np(packed: np.ndarray, rows: int) -> np.ndarray:
    """Inverse of `pack_int4` (NumPy)."""
    p = np.asarray(packed, np.uint8)
    out = np.empty((2 * len(p),) + p.shape[1:], np.uint8)
    out[0::2], out[1::2] = p & 15, p >> 4
    return out[:rows]


def unpack_int4(packed, rows: int):
    """Inverse of `pack_int4` as graph ops (floor-div/mod, which TFLite supports) -> int32."""
    from keras import ops

    p = ops.cast(packed, "int32")
    low, high = ops.mod(p, 16), ops.floor_divide(p, 16)
    both = ops.stack([low, high], axis=1)  # (rows/2, 2, ...)
    shape = ops.shape(p)
    return ops.reshape(both, (2 * shape[0],) + tuple(shape[1:]))[:rows]
