"""Statistics of a layer's inputs reduced as calibration rows stream by, and the Hessian math
every data-aware method shares (pure NumPy).

`InputStats` keeps ``X^T X`` (float64), per-column ``sum x^2``, ``sum |x|`` and ``max |x|``
and the row count, so no calibration row is kept in memory; `hessian` and
`inverse_hessian_factor` are the one place GPTQ, SparseGPT and the low-rank whitening get
their second-order terms from.

Example:
    >>> stats = InputStats(16)
    >>> for x in batches:                       # each (rows, 16)
    ...     stats.update(x)
    >>> u, dead = inverse_hessian_factor(hessian(stats), damping=0.01, layer="mlp_out")
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack
from threadpoolctl import ThreadpoolController

from tfcompress.errors import TfcompressError

NEEDS = ("xtx", "sq", "abs", "max")
# narrower factorizations run LAPACK on one thread (see `_lapack_threads`)
ONE_THREAD_BELOW = 4096


class InputStats:
    """Streamed statistics of one layer's inputs: ``update`` with ``(rows, d_in)`` batches.

    ``needs`` picks what is kept (``"xtx"``: ``X^T X``, ``"sq"``: ``sum x_j^2``,
    ``"abs"``: ``sum |x_j|``, ``"max"``: ``max |x_j|``); ``max_rows`` stops counting after
    that many rows.
    """

    def __init__(self, d_in: int, needs=NEEDS, max_rows: int | None = None):
        bad = set(needs) - set(NEEDS)
        if bad:
            raise TfcompressError(f"needs must be a subset of {NEEDS}, got {sorted(bad)}")
        self.d_in, self.needs, self.max_rows = int(d_in), tuple(needs), max_rows
        self.n, self._hessian, self.readers = 0, None, 1  # readers: layers sharing these
        self.xtx = np.zeros((d_in, d_in)) if "xtx" in needs else None
        self.sq = np.zeros(d_in) if "sq" in needs or "xtx" in needs else None
        self.abs = np.zeros(d_in) if "abs" in needs else None
        self.max = np.zeros(d_in) if "max" in needs else None

    @classmethod
    def from_rows(cls, inputs, d_in: int | None = None, needs=NEEDS) -> InputStats:
        """Statistics of a whole ``(rows, d_in)`` array (checks the width against ``d_in``)."""
        x = np.asarray(inputs)
        width = x.shape[-1] if x.ndim == 2 else -1
        if x.ndim != 2 or (d_in is not None and width != d_in):
            raise TfcompressError(f"calibration inputs must be (rows, {d_in or 'd_in'}) for "
                                  f"this layer, got shape {x.shape}")
        stats = cls(width, needs)
        stats.update(x)
        return stats

    def update(self, x) -> None:
        """Add a ``(rows, d_in)`` batch: products in the batch's precision (float32 for model
        activations, which keeps a 1536-wide ``X^T X`` affordable; float64 stays float64),
        running sums in float64."""
        x = np.asarray(x)
        x = x.astype(np.float64 if x.dtype == np.float64 else np.float32,
                     copy=False).reshape(-1, self.d_in)  # no copy of float32 activations
        if self.max_rows is not None:
            x = x[: max(self.max_rows - self.n, 0)]
        if not len(x):
            return
        self.n += len(x)
        if self.xtx is not None:
            self.xtx += x.T @ x  # cast while added: no float64 copy of the products
            self.sq = np.diag(self.xtx).copy()
        elif self.sq is not None:
            self.sq += np.einsum("ij,ij->j", x, x, dtype=np.float64)
        if self.abs is not None:
            self.abs += np.abs(x).sum(axis=0, dtype=np.float64)
        if self.max is not None:
            np.maximum(self.max, np.abs(x).max(axis=0), out=self.max)

    def take_hessian(self) -> np.ndarray:
        """`hessian` of these statistics, made in place of ``X^T X`` (one ``(d_in, d_in)``
        float64 array less: 512 MB at d_in 8192): a copy for each of the ``readers`` layers
        sharing them but the last, whose call lets go of the array itself, so every caller
        owns what it gets (GPTQ and SparseGPT factor in it) and frees it when done. The last
        use of ``xtx``: None afterwards.

        Example:
            >>> qt = gptq(w, stats.take_hessian(), quantizer)
        """
        if self._hessian is None:
            if self.xtx is None or not self.n:
                raise TfcompressError("the Hessian needs X^T X of at least one calibration "
                                      "row (or every layer reading it took it already)")
            h, self.xtx = self.xtx, None
            h *= 2.0  # the same values as hessian()'s 2 X^T X / n
            h /= self.n
            self._hessian = h
        self.readers -= 1
        if self.readers > 0:
            return self._hessian.copy()
        h, self._hessian = self._hessian, None
        return h

    def norms(self) -> np.ndarray:
        """``||X_j||_2`` of each input feature."""
        return np.sqrt(self.sq)

    def mean_abs(self) -> np.ndarray:
        """``mean |x_j|`` of each input feature."""
        return self.abs / max(self.n, 1)

    def max_abs(self) -> np.ndarray:
        """``max |x_j|`` of each input feature over every row seen."""
        return self.max

    def covariance(self) -> np.ndarray:
        """``X^T X / n`` (uncentred)."""
        return self.xtx / max(self.n, 1)

    def state(self) -> dict:
        """Arrays that `from_state` restores (for saving between runs)."""
        out = {"n": np.asarray(self.n), "d_in": np.asarray(self.d_in)}
        for key in ("xtx", "sq", "abs", "max"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_state(cls, state: dict, needs=NEEDS, max_rows: int | None = None) -> InputStats:
        stats = cls(int(state["d_in"]), needs, max_rows)
        stats.n = int(state["n"])
        for key in ("xtx", "sq", "abs", "max"):
            if key in state:
                setattr(stats, key, np.asarray(state[key], dtype=np.float64))
        return stats


def as_stats(inputs, d_in: int | None = None, needs=NEEDS) -> InputStats:
    """``inputs`` as `InputStats`: passed through, or reduced from a ``(rows, d_in)`` array."""
    if isinstance(inputs, InputStats):
        if d_in is not None and inputs.d_in != d_in:
            raise TfcompressError(f"input statistics are for width {inputs.d_in}, this layer "
                                  f"takes {d_in}")
        return inputs
    return InputStats.from_rows(inputs, d_in, needs)


def hessian(inputs, d_in: int | None = None) -> np.ndarray:
    """``2 X^T X / n`` (float64): the Hessian of ``||X W - X W'||^2 / n`` w.r.t. ``W'``.

    ``inputs`` is a ``(rows, d_in)`` array or `InputStats` holding ``xtx``.
    """
    stats = as_stats(inputs, d_in, needs=("xtx",))
    if stats.xtx is None or not stats.n:
        raise TfcompressError("the Hessian needs X^T X of at least one calibration row")
    return 2.0 * stats.xtx / stats.n


def inverse_hessian_factor(h: np.ndarray, damping: float = 0.01, layer: str = "",
                           retries: int = 6, overwrite: bool = False
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Upper Cholesky factor ``U`` of ``(H + lambda I)^-1 = U^T U`` and the dead inputs.

    Inputs that are always zero (``H_jj == 0``) get ``H_jj = 1`` so the factor exists
    (callers zero their weights); ``lambda`` as in `damped_cholesky`. ``U = P chol(P H P)^-1
    P`` with ``P`` the order reversal, by LAPACK's Cholesky and triangular inverse in one
    ``d_in x d_in`` array (512 MB at d_in 8192): a copy of ``h``, or ``h`` itself with
    ``overwrite=True`` when it is a C-ordered float64 array (its values are then lost; other
    arrays are copied).

    Example:
        >>> h = np.array([[2.0, 1.0], [1.0, 2.0]])
        >>> u, dead = inverse_hessian_factor(h, damping=0.0)
        >>> bool(np.allclose(u.T @ u, np.linalg.inv(h))), dead.tolist()
        (True, [False, False])
    """
    dead = np.diag(h) == 0
    diag = np.where(dead, 1.0, np.diag(h))  # a copy: h may be worked in below
    owned = overwrite and h.dtype == np.float64 and h.flags.c_contiguous
    rev = _flip(h if owned else np.array(h, dtype=np.float64))  # P H P
    del h  # with overwrite, the one reference once the caller passed it inline
    rev.flat[::len(rev) + 1] = diag[::-1]
    low = damped_cholesky(rev, damping, layer, retries)
    with _lapack_threads(len(low)):
        lapack.dtrtri(low, lower=1, overwrite_c=1)
    return _flip(_transpose(rev)), dead  # rev held low.T: C-ordered rows for the callers


def damped_cholesky(a: np.ndarray, damping: float, layer: str = "",
                    retries: int = 6) -> np.ndarray:
    """Lower Cholesky factor of ``A + lambda I``, ``lambda = damping * mean(diag A)`` raised
    tenfold up to ``retries`` times while ``A`` is not positive definite (then a
    `TfcompressError` names ``layer``). Written over ``a``, a C-ordered float64 array the
    caller gives up: the factor is its transpose, Fortran-ordered, where LAPACK works
    without a copy.

    Example:
        >>> low = damped_cholesky(np.array([[4.0, 2.0], [2.0, 5.0]]), damping=0.0)
        >>> low.tolist()
        [[2.0, 0.0], [1.0, 2.0]]
    """
    diag = np.diag(a).copy()
    mean_diag = float(np.mean(diag))
    extra = damping * mean_diag
    for attempt in range(retries + 1):
        if attempt:
            extra = max(extra * 10, 1e-6 * mean_diag, 1e-12)
            _mirror_lower(a)  # the failed factorization wrote over the upper triangle
        a.flat[::len(a) + 1] = diag + extra
        with _lapack_threads(len(a)):
            low, info = lapack.dpotrf(a.T, lower=1, clean=0, overwrite_a=1)
        if info == 0:
            for j in range(1, len(a)):  # the triangle LAPACK left holds A's values
                a[j, :j] = 0.0
            return low
    raise TfcompressError(
        f"the input Hessian of layer {layer or '?'} is not positive definite even with "
        f"damping {extra / max(mean_diag, 1e-300):.3g} x mean diagonal: give more or more "
        "varied calibration data, or exclude the layer")


def _lapack_threads(n: int):
    """One BLAS thread for LAPACK on an ``n x n`` matrix below `ONE_THREAD_BELOW`: SciPy's
    OpenBLAS is a thread pool beside NumPy's, and after a call its idle workers spin for a
    while, taking a core from what runs next (SmolLM2's GPTQ took 40 % longer on 2 cores with
    both pools); a wide factorization is worth both cores (8192: 3.7 s against 6.5 s)."""
    return _blas().limit(limits=1, user_api="blas") if n < ONE_THREAD_BELOW else nullcontext()


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def permute_symmetric(h: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """``h[perm][:, perm]`` of a square C-ordered ``h``, written over it: rows moved along
    the permutation's cycles, columns a slab of rows at a time (``h[np.ix_(perm, perm)]``
    would hold a second ``d_in x d_in`` array: 512 MB at d_in 8192).

    Example:
        >>> h = np.arange(9.0).reshape(3, 3)
        >>> permute_symmetric(h, np.array([2, 0, 1])).tolist()
        [[8.0, 6.0, 7.0], [2.0, 0.0, 1.0], [5.0, 3.0, 4.0]]
    """
    for r0 in range(0, len(h), 256):
        h[r0:r0 + 256] = h[r0:r0 + 256][:, perm]
    placed = np.zeros(len(h), bool)
    for start in range(len(h)):
        if placed[start]:
            continue
        first, i = h[start].copy(), start
        while perm[i] != start:  # row i takes row perm[i], not yet overwritten
            h[i] = h[perm[i]]
            placed[i] = True
            i = perm[i]
        h[i] = first
        placed[i] = True
    return h


@dataclass
class BlockRows:
    """Rows of one block of a matrix that GPTQ or SparseGPT settles row by row: ``w`` their
    values, ``err`` each settled row's error over its inverse-Hessian diagonal, ``owed[i, j]``
    the share of row ``j``'s error that row ``i`` takes (the block of the factor, transposed
    so that a row's shares are contiguous). Errors reach a row when it is asked for (`row`:
    one matrix-vector product), not after every row as in the papers' rank-1 updates of the
    whole block: the same values, without a ``(block, d_out)`` update per row."""

    w: np.ndarray
    owed: np.ndarray
    err: np.ndarray
    done: int = 0  # the errors of the rows before it are in ``w`` already

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` with the errors of every row before it applied."""
        return self.w[i] - self.owed[i, self.done:i] @ self.err[self.done:i]

    def settle_up_to(self, i: int) -> None:
        """Apply the pending errors to rows ``i`` on (a choice that reads several rows at
        once: a group's scale, an N:M pattern)."""
        self.w[i:] -= self.owed[i:, self.done:i] @ self.err[self.done:i]
        self.done = i


def error_feedback_blocks(w: np.ndarray, hinv: np.ndarray,
                          block_size: int) -> Iterator[tuple[int, BlockRows]]:
    """``(first row, BlockRows)`` for each block of ``block_size`` rows of ``w`` (d_in,
    d_out; changed in place), ``hinv`` the upper inverse-Hessian factor in ``w``'s row
    order. Once the caller has settled a block (each row's ``err``, its final values in
    ``rows.w``), the block is written back and its errors pushed onto every later row at once
    (the papers' lazy batch update).

    Example (rounding two rows; the second takes half the first's error, 0.6 - 0.5 * 0.4):
        >>> w, hinv = np.array([[0.4], [0.6]]), np.array([[1.0, 0.5], [0.0, 1.0]])
        >>> for start, rows in error_feedback_blocks(w, hinv, 2):
        ...     for i in range(len(rows.w)):
        ...         x = rows.row(i)
        ...         rows.w[i] = np.round(x)
        ...         rows.err[i] = (x - rows.w[i]) / rows.owed[i, i]
        >>> w.ravel().tolist()
        [0.0, 0.0]
    """
    for i1 in range(0, len(w), block_size):
        i2 = min(i1 + block_size, len(w))
        rows = BlockRows(w[i1:i2].copy(), np.ascontiguousarray(hinv[i1:i2, i1:i2].T),
                         np.zeros_like(w[i1:i2]))
        yield i1, rows
        w[i1:i2] = rows.w
        w[i2:] -= hinv[i1:i2, i2:].T @ rows.err


def _mirror_lower(x: np.ndarray) -> None:
    """Copy the strict lower triangle of a square matrix onto its upper one, in place."""
    for j in range(len(x) - 1):
        x[j, j + 1:] = x[j + 1:, j]


def _transpose(x: np.ndarray, b: int = 256) -> np.ndarray:
    """``x.T`` of a square matrix written over it, a pair of ``b x b`` blocks at a time."""
    n = len(x)
    for i in range(0, n, b):
        x[i:i + b, i:i + b] = x[i:i + b, i:i + b].T.copy()
        for j in range(i + b, n, b):
            above = x[i:i + b, j:j + b].copy()
            x[i:i + b, j:j + b] = x[j:j + b, i:i + b].T
            x[j:j + b, i:i + b] = above.T
    return x


def _flip(x: np.ndarray) -> np.ndarray:
    """``x[::-1, ::-1]`` of a square matrix, in place (row pairs swapped reversed)."""
    n = len(x)
    for i in range(n // 2):
        top = x[i, ::-1].copy()
        x[i] = x[n - 1 - i, ::-1]
        x[n - 1 - i] = top
    if n % 2:
        x[n // 2] = x[n // 2, ::-1].copy()
    return x
