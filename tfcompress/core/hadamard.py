"""Hadamard matrices (Sylvester and Paley) and their product with activations as small
Kronecker factors, for the rotations of `tfcompress.quantize.rotate`.

``hadamard(n)`` is ``kron(Paley(m), Sylvester(2^k))``; Sylvester's matrix is itself a
Kronecker product of smaller Sylvester matrices, so ``x @ hadamard(n) / sqrt(n)`` is a few
matmuls with factors of at most 16 x 16 (`hadamard_factors`, `kron_matmul`): cheap at run
time, and small enough (under 1,024 values) that TFLite's dynamic-range converter keeps them
float, so the activations they rotate are not rounded to int8 first.

Example:
    >>> factors = hadamard_factors(1536)      # 12 (Paley, q = 11), 16, 8
    >>> [f.shape[0] for f in factors]
    [12, 16, 8]
    >>> x = np.random.default_rng(0).standard_normal((3, 1536))
    >>> np.allclose(kron_matmul(x, factors, np), x @ hadamard(1536) / np.sqrt(1536))
    True
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from tfcompress.errors import TfcompressError


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, int(n ** 0.5) + 1))


def paley_hadamard(q: int) -> np.ndarray:
    """The ``(q+1) x (q+1)`` Hadamard matrix of Paley's first construction, ``q`` a prime
    with ``q % 4 == 3``: ``I + [[0, 1^T], [-1, C]]``, ``C_ij`` the Legendre symbol of ``j - i``.

    Example:
        >>> h = paley_hadamard(3)
        >>> bool((h @ h.T == 4 * np.eye(4)).all())
        True
    """
    if not _is_prime(q) or q % 4 != 3:
        raise TfcompressError(f"q must be a prime with q % 4 == 3, got {q}")
    chi = np.array([0] + [1 if pow(a, (q - 1) // 2, q) == 1 else -1 for a in range(1, q)])
    jacobsthal = chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]
    s = np.zeros((q + 1, q + 1))
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jacobsthal
    return np.eye(q + 1) + s


def sylvester(n: int) -> np.ndarray:
    """Sylvester's ``n x n`` Hadamard matrix, ``n`` a power of two."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _split(n: int) -> tuple[int, int] | None:
    """``(paley, two)``: ``n = paley * two`` with the largest power of two ``two`` whose
    cofactor is 1 or a Paley order; None when there is none."""
    two = n & -n  # the largest power of two dividing n
    while two >= 1:
        m = n // two
        if m == 1 or (_is_prime(m - 1) and (m - 1) % 4 == 3):
            return m, two
        two //= 2
    return None


def hadamard(n: int) -> np.ndarray | None:
    """A ``n x n`` matrix of +-1 with ``H H^T = n I`` (Sylvester's ``2^k`` times a Paley
    factor of order ``q + 1``), or None when neither construction reaches ``n``.

    Example:
        >>> hadamard(576).shape         # 8 x 72 (Paley, q = 71)
        (576, 576)
    """
    split = _split(n)
    if split is None:
        return None
    m, two = split
    return sylvester(two) if m == 1 else np.kron(paley_hadamard(m - 1), sylvester(two))


def hadamard_factors(n: int, largest: int = 16) -> list[np.ndarray] | None:
    """Orthonormal factors whose Kronecker product is ``hadamard(n) / sqrt(n)``: the Paley
    factor (if any) first, then Sylvester factors of at most ``largest`` rows; None when
    `hadamard` cannot build ``n``.

    Example:
        >>> [f.shape[0] for f in hadamard_factors(64)]
        [16, 4]
    """
    split = _split(n)
    if split is None:
        return None
    m, two = split
    factors = [] if m == 1 else [paley_hadamard(m - 1)]
    while two > 1:
        k = min(two, largest)
        factors.append(sylvester(k))
        two //= k
    return [f / np.sqrt(f.shape[0]) for f in factors] or [np.ones((1, 1))]


def kron_matrix(factors: list[np.ndarray]) -> np.ndarray:
    """The ``n x n`` product ``kron(*factors)``."""
    return reduce(np.kron, factors)


def kron_matmul(x, factors: list[np.ndarray], ops):
    """``x @ kron(*factors)`` for ``x`` of shape ``(rows, n)``, one small matmul per factor;
    ``ops`` is ``numpy``, ``tensorflow`` or ``keras.ops`` (``reshape``, ``transpose``,
    ``matmul``).

    Each step reads the leading factor's axis, moves it last and multiplies it there, so after
    every factor the axes are back in their order.
    """
    n = int(np.prod([f.shape[0] for f in factors]))
    for f in factors:
        k = f.shape[0]
        x = ops.transpose(ops.reshape(x, (-1, k, n // k)), (0, 2, 1))
        x = ops.reshape(ops.matmul(x, f.astype(np.float32)), (-1, n))
    return x
