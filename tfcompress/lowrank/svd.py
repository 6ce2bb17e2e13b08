"""Low-rank matrix math on numpy arrays: (activation-aware) truncated SVD, ranks, budgets.

A kernel ``W`` (d_in x d_out) becomes ``u @ v`` with ``u`` (d_in x r) and ``v`` (r x d_out).
Activation-aware methods factor ``T @ W`` instead, where ``T`` reflects the calibration
inputs ``X`` (rows = tokens), so the error is small where the inputs actually are:

- ``"svd"``: plain truncated SVD (``T = I``), optimal for ``||W - W_r||``.
- ``"asvd"``: ``T = diag(mean|x_j| ** alpha)`` (ASVD, Yuan et al. 2023).
- ``"svd-llm"``: ``T = L^T`` with ``L L^T = X^T X / n`` (SVD-LLM whitening, Wang et al. 2024),
  optimal for the output error ``||X W - X W_r||``.

Example:
    >>> t = input_transform("svd-llm", x)             # x: (tokens, d_in)
    >>> u, v, s = factor_matrix(w, 16, t)             # w ~ u @ v, s: singular values of T @ W
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfcompress.core.stats import InputStats, as_stats, damped_cholesky
from tfcompress.errors import TfcompressError

MATRIX_METHODS = ("svd", "asvd", "svd-llm")


@dataclass
class InputTransform:
    """``forward`` (d_in x d_in) is applied before the SVD, ``inverse`` undoes it; None = I."""

    forward: np.ndarray | None = None
    inverse: np.ndarray | None = None


def check_rank(rank: int, d_in: int, d_out: int, arg: str = "rank") -> int:
    """``rank`` as an int in ``[1, min(d_in, d_out)]``, or a `TfcompressError` naming ``arg``."""
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
        raise TfcompressError(f"{arg} must be an integer, got {rank!r}")
    if not 1 <= rank <= min(d_in, d_out):
        raise TfcompressError(
            f"{arg} must be between 1 and min(d_in, d_out) = {min(d_in, d_out)} for a "
            f"{d_in}x{d_out} kernel, got {rank}"
        )
    return int(rank)


def whitening_factor(inputs, damping: float = 1e-3, layer: str = "") -> np.ndarray:
    """Lower Cholesky factor ``L`` of ``X^T X / n + damping * mean(diag) * I``; ``inputs``
    is ``(rows, d_in)`` or their `InputStats`.

    The damping keeps the covariance positive definite when some input channels are
    (nearly) constant; it is raised tenfold until the factorization succeeds
    (`tfcompress.core.stats.damped_cholesky`; ``layer`` names the layer if it never does).
    """
    # covariance() is a new float64 array: the factor is made in it, no second copy
    cov = np.ascontiguousarray(as_stats(inputs, needs=("xtx",)).covariance(), np.float64)
    return damped_cholesky(cov, damping, layer, retries=7)


def activation_scales(inputs, alpha: float = 0.5, eps: float = 1e-6) -> np.ndarray:
    """ASVD channel scales ``mean|x_j| ** alpha`` (floored at ``eps`` so they invert);
    ``inputs`` is ``(rows, d_in)`` or their `InputStats`."""
    mags = as_stats(inputs, needs=("abs",)).mean_abs()
    return np.maximum(mags, eps) ** alpha


def input_transform(method: str, inputs=None, damping: float = 1e-3,
                    alpha: float = 0.5, layer: str = "") -> InputTransform:
    """The input-side transform of ``method`` (one of `MATRIX_METHODS`) from calibration rows
    (or their `InputStats`); ``layer`` names the layer in errors."""
    if method not in MATRIX_METHODS:
        raise TfcompressError(f"method must be one of {MATRIX_METHODS}, got {method!r}")
    if method == "svd":
        return InputTransform()
    if inputs is None or (getattr(inputs, "n", None) if isinstance(inputs, InputStats)
                          else len(inputs)) == 0:
        raise TfcompressError(f"method {method!r} needs calibration inputs; pass calibration=")
    if method == "asvd":
        s = activation_scales(inputs, alpha)
        return InputTransform(np.diag(s), np.diag(1.0 / s))
    lower = whitening_factor(inputs, damping, layer)
    return InputTransform(lower.T, np.linalg.inv(lower.T))


def transformed_spectrum(matrix: np.ndarray, transform: InputTransform | None = None):
    """SVD ``(U, s, Vt)`` of ``T @ W``, in float64."""
    m = np.asarray(matrix, dtype=np.float64)
    if transform is not None and transform.forward is not None:
        m = transform.forward @ m
    return np.linalg.svd(m, full_matrices=False)


def factor_matrix(matrix: np.ndarray, rank: int, transform: InputTransform | None = None,
                  svd=None):
    """``(u, v, s)``: ``W ~ u @ v`` of rank ``rank``; ``s`` the singular values of ``T @ W``.

    The singular values are split evenly (``sqrt(s)`` on each side) so both factors have
    the same scale, which helps fine-tuning. ``svd`` reuses a `transformed_spectrum`.
    """
    d_in, d_out = np.shape(matrix)
    rank = check_rank(rank, d_in, d_out)
    big_u, s, vt = svd if svd is not None else transformed_spectrum(matrix, transform)
    root = np.sqrt(s[:rank])
    u = big_u[:, :rank] * root
    if transform is not None and transform.inverse is not None:
        u = transform.inverse @ u
    v = root[:, None] * vt[:rank]
    return u.astype(np.float32), v.astype(np.float32), s


def truncated_svd(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-``rank`` factors ``(u, v)`` of ``matrix`` in Frobenius norm (Eckart-Young)."""
    u, v, _ = factor_matrix(matrix, rank)
    return u, v


def lowrank_param_count(d_in: int, d_out: int, rank: int, bias: bool = False) -> int:
    """Weights of a rank-``rank`` factorization: ``rank * (d_in + d_out)`` (+ ``d_out`` bias)."""
    return rank * (d_in + d_out) + (d_out if bias else 0)


def break_even_rank(d_in: int, d_out: int) -> int:
    """The largest rank whose factors hold fewer weights than the dense ``d_in x d_out``."""
    return (d_in * d_out - 1) // (d_in + d_out)


def rank_for_ratio(d_in: int, d_out: int, ratio: float) -> int:
    """The largest rank (at least 1) whose factors hold at most ``ratio`` of the dense weights."""
    check_fraction(ratio, "target_ratio", closed=False)
    return max(int(ratio * d_in * d_out // (d_in + d_out)), 1)


def rank_for_energy(singular_values: np.ndarray, energy: float) -> int:
    """The smallest rank keeping at least ``energy`` of ``sum(s**2)``."""
    check_fraction(energy, "energy", closed=True)
    power = np.asarray(singular_values, dtype=np.float64) ** 2
    kept = np.cumsum(power) / max(power.sum(), np.finfo(float).tiny)
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, len(power)))


def check_fraction(value: float, arg: str, closed: bool) -> float:
    """``value`` in ``(0, 1]`` (``closed``) or ``(0, 1)``, else a `TfcompressError`."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (
        0 < value <= 1 if closed else 0 < value < 1)
    if not ok:
        interval = "(0, 1]" if closed else "(0, 1)"
        raise TfcompressError(f"{arg} must be a number in {interval}, got {value!r}")
    return float(value)


def tail_error(singular_values: np.ndarray, rank: int) -> float:
    """Relative squared error ``sum(s[r:]**2) / sum(s**2)`` of keeping ``rank`` values."""
    power = np.asarray(singular_values, dtype=np.float64) ** 2
    return float(power[rank:].sum() / max(power.sum(), np.finfo(float).tiny))


def allocate_ranks(spectra: list[np.ndarray], dims: list[tuple[int, int]], budget: int,
                   weights: list[float] | None = None, min_rank: int = 1) -> list[int]:
    """Ranks that fit ``budget`` factor weights with the least weighted truncation error.

    Layer ``i`` loses ``weights[i] * s_i[r:]**2 / sum(s_i**2)`` at rank ``r`` (its measured
    sensitivity times its relative error) and pays ``d_in + d_out`` weights per rank. As the
    gains per rank only decrease, taking singular values greedily by gain per weight is
    optimal for this separable problem. Ranks stop at each layer's `break_even_rank`.
    """
    if len(spectra) != len(dims) or (weights is not None and len(weights) != len(dims)):
        raise TfcompressError("spectra, dims and weights must have one entry per layer")
    weights = [1.0] * len(dims) if weights is None else list(weights)
    ranks = [min(min_rank, break_even_rank(*d)) for d in dims]
    spent = sum(r * (a + b) for r, (a, b) in zip(ranks, dims, strict=True))
    if spent > budget:
        raise TfcompressError(
            f"budget of {budget:,} weights is below the minimum of {spent:,} (rank {min_rank} "
            "for every layer)")
    candidates = []
    for i, (s, (a, b), w) in enumerate(zip(spectra, dims, weights, strict=True)):
        power = np.asarray(s, dtype=np.float64) ** 2
        gain = w * power / max(power.sum(), np.finfo(float).tiny) / (a + b)
        for r in range(ranks[i], min(break_even_rank(a, b), len(power))):
            candidates.append((gain[r], i))
    for _, i in sorted(candidates, key=lambda c: -c[0]):
        cost = sum(dims[i])
        if spent + cost <= budget:
            ranks[i] += 1
            spent += cost
    return ranks
