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

import numpy as np

from tfcompress.errors import TfcompressError

NEEDS = ("xtx", "sq", "abs", "max")


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
        self.n = 0
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
        x = x.astype(np.float64 if x.dtype == np.float64 else np.float32).reshape(-1, self.d_in)
        if self.max_rows is not None:
            x = x[: max(self.max_rows - self.n, 0)]
        if not len(x):
            return
        self.n += len(x)
        if self.xtx is not None:
            self.xtx += (x.T @ x).astype(np.float64)
            self.sq = np.diag(self.xtx).copy()
        elif self.sq is not None:
            self.sq += np.einsum("ij,ij->j", x, x, dtype=np.float64)
        if self.abs is not None:
            self.abs += np.abs(x).sum(axis=0, dtype=np.float64)
        if self.max is not None:
            np.maximum(self.max, np.abs(x).max(axis=0), out=self.max)

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
                           retries: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Upper Cholesky factor ``U`` of ``(H + lambda I)^-1 = U^T U`` and the dead inputs.

    ``lambda = damping * mean(diag H)``; inputs that are always zero (``H_jj == 0``) get
    ``H_jj = 1`` so the factor exists (callers zero their weights). When ``H`` is not
    positive definite, ``lambda`` grows tenfold up to ``retries`` times, then a
    `TfcompressError` names ``layer``. One Cholesky of the reversed matrix and one
    triangular inverse: ``U = P chol(P H P)^-1 P`` with ``P`` the order reversal.
    """
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    mean_diag = float(np.mean(np.diag(h)))
    extra = damping * mean_diag
    for attempt in range(retries + 1):
        if attempt:
            extra = max(extra * 10, 1e-6 * mean_diag, 1e-12)
        try:
            rev = np.linalg.cholesky(h[::-1, ::-1] + extra * np.eye(len(h)))
            return np.ascontiguousarray(np.linalg.inv(rev)[::-1, ::-1]), dead
        except np.linalg.LinAlgError:
            continue
    raise TfcompressError(
        f"the input Hessian of layer {layer or '?'} is not positive definite even with "
        f"damping {extra / max(mean_diag, 1e-300):.3g} x mean diagonal: give more or more "
        "varied calibration data, or exclude the layer")
