"""CP and Tucker decompositions (via tensorly) of higher-order kernels, on numpy arrays.

A 3-way kernel such as an attention projection ``(d_model, heads, head_dim)`` or a Conv
kernel viewed as ``(taps, c_in, c_out)`` is approximated by

- CP (PARAFAC): ``K[i,j,k] ~ sum_r A[i,r] B[j,r] C[k,r]``, ``rank * sum(dims)`` weights;
- Tucker: ``K ~ G x_1 U_1 x_2 U_2 ...`` with a small core ``G``.

Example:
    >>> factors = cp_decompose(kernel, rank=8)          # one (dim_i, 8) matrix per axis
    >>> np.allclose(cp_to_tensor(factors), kernel)      # when kernel has CP rank <= 8
"""

from __future__ import annotations

import numpy as np

from tfcompress.errors import TfcompressError


def _tensorly():
    import tensorly

    tensorly.set_backend("numpy")
    return tensorly


def cp_decompose(tensor: np.ndarray, rank: int, n_iter_max: int = 200, seed: int = 0,
                 tol: float = 1e-10) -> list[np.ndarray]:
    """CP factors ``[A_0, A_1, ...]`` (``A_i``: ``(dim_i, rank)``), the weights folded in."""
    _check_rank(rank, "rank")
    tl = _tensorly()
    from tensorly.decomposition import parafac

    cp = parafac(tl.tensor(np.asarray(tensor, dtype=np.float64)), rank, n_iter_max=n_iter_max,
                 init="svd" if rank <= min(np.shape(tensor)) else "random", tol=tol,
                 random_state=seed, normalize_factors=True)
    weights, factors = cp
    factors = [np.asarray(f) for f in factors]
    # Spread the component weights evenly over the axes so no factor dwarfs the others.
    share = np.abs(weights) ** (1.0 / len(factors))
    factors = [f * share for f in factors]
    factors[0] = factors[0] * np.sign(weights)
    return [f.astype(np.float32) for f in factors]


def cp_to_tensor(factors: list[np.ndarray]) -> np.ndarray:
    """The full tensor of CP ``factors``."""
    tl = _tensorly()
    return np.asarray(tl.cp_to_tensor((None, [np.asarray(f, np.float64) for f in factors])))


def tucker_decompose(tensor: np.ndarray, ranks: tuple[int, ...], modes: tuple[int, ...] | None
                     = None, n_iter_max: int = 100, seed: int = 0):
    """``(core, factors)`` of a Tucker decomposition over ``modes`` (default: all axes).

    ``factors[i]`` is ``(dim_{modes[i]}, ranks[i])``; axes outside ``modes`` keep full size.
    """
    shape = np.shape(tensor)
    modes = tuple(range(len(shape))) if modes is None else tuple(modes)
    if len(ranks) != len(modes):
        raise TfcompressError(f"ranks must have one entry per mode {modes}, got {ranks}")
    for r, m in zip(ranks, modes, strict=True):
        _check_rank(r, f"rank of mode {m}", shape[m])
    tl = _tensorly()
    from tensorly.decomposition import partial_tucker

    (core, factors), _ = partial_tucker(tl.tensor(np.asarray(tensor, dtype=np.float64)),
                                        rank=list(ranks), modes=list(modes),
                                        n_iter_max=n_iter_max, init="svd", random_state=seed)
    return np.asarray(core, np.float32), [np.asarray(f, np.float32) for f in factors]


def tucker_to_tensor(core: np.ndarray, factors: list[np.ndarray],
                     modes: tuple[int, ...] | None = None) -> np.ndarray:
    """The full tensor of a (partial) Tucker decomposition."""
    tl = _tensorly()
    from tensorly import tenalg

    modes = tuple(range(np.ndim(core))) if modes is None else tuple(modes)
    return np.asarray(tenalg.multi_mode_dot(tl.tensor(np.asarray(core, np.float64)),
                                            [np.asarray(f, np.float64) for f in factors],
                                            modes=list(modes)))


def cp_param_count(shape: tuple[int, ...], rank: int) -> int:
    """Weights of a rank-``rank`` CP decomposition: ``rank * sum(shape)``."""
    return rank * int(sum(shape))


def tucker2_param_count(taps: int, c_in: int, c_out: int, r_in: int, r_out: int) -> int:
    """Weights of a Tucker-2 conv: ``c_in*r_in + taps*r_in*r_out + r_out*c_out``."""
    return c_in * r_in + taps * r_in * r_out + r_out * c_out


def cp_rank_for_ratio(shape: tuple[int, ...], ratio: float) -> int:
    """The largest CP rank (at least 1) holding at most ``ratio`` of ``prod(shape)`` weights."""
    return max(int(ratio * np.prod(shape) // sum(shape)), 1)


def tucker2_rank_for_ratio(taps: int, c_in: int, c_out: int, ratio: float) -> int:
    """The largest equal Tucker-2 rank ``r`` (at most min(c_in, c_out)) within ``ratio``."""
    target, best = ratio * taps * c_in * c_out, 1
    for r in range(1, min(c_in, c_out) + 1):
        if tucker2_param_count(taps, c_in, c_out, r, r) <= target:
            best = r
    return best


def _check_rank(rank, arg: str, upper: int | None = None) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1 or (
            upper is not None and rank > upper):
        bound = f" and at most {upper}" if upper is not None else ""
        raise TfcompressError(f"{arg} must be an integer >= 1{bound}, got {rank!r}")
