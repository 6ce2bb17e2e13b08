"""Numpy-level checks of the low-rank math: SVD variants, ranks, budgets, CP/Tucker."""

import numpy as np
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.lowrank import svd as lr
from tfcompress.lowrank import tensor as tens

RNG = np.random.default_rng(0)


def test_full_rank_svd_reproduces_matrix():
    w = RNG.normal(size=(12, 7))
    u, v = lr.truncated_svd(w, 7)
    assert u.shape == (12, 7) and v.shape == (7, 7)
    np.testing.assert_allclose(u @ v, w, atol=1e-5)


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_truncation_error_is_the_tail_of_singular_values(rank):
    w = RNG.normal(size=(10, 8))
    s = np.linalg.svd(w, compute_uv=False)
    u, v = lr.truncated_svd(w, rank)
    np.testing.assert_allclose(np.sum((w - u @ v) ** 2), np.sum(s[rank:] ** 2), rtol=1e-4)
    assert lr.tail_error(s, rank) == pytest.approx(np.sum(s[rank:] ** 2) / np.sum(s**2))


def _unequal_inputs(n=2000, d=16):
    scales = np.logspace(-2, 1.5, d)
    return RNG.normal(size=(n, d)) * scales, RNG.normal(size=(d, 12))


@pytest.mark.parametrize("method", ["asvd", "svd-llm"])
def test_activation_aware_svd_beats_plain_on_unequal_channel_scales(method):
    x, w = _unequal_inputs()
    errors = {}
    for m in ("svd", method):
        u, v, _ = lr.factor_matrix(w, 4, lr.input_transform(m, x, damping=1e-6))
        errors[m] = np.sum((x @ w - x @ (u @ v)) ** 2)
    assert errors[method] < 0.5 * errors["svd"]


def test_svd_llm_output_error_equals_whitened_tail():
    x, w = _unequal_inputs()
    t = lr.input_transform("svd-llm", x, damping=1e-9)
    u, v, s = lr.factor_matrix(w, 5, t)
    out_err = np.sum((x @ w - x @ (u @ v).astype(np.float64)) ** 2) / len(x)
    np.testing.assert_allclose(out_err, np.sum(s[5:] ** 2), rtol=1e-3)


def test_whitening_factor_is_cholesky_of_damped_covariance():
    x = RNG.normal(size=(50, 4))
    x[:, 3] = 0.0  # a dead channel: covariance is singular, damping keeps it factorizable
    lower = lr.whitening_factor(x, damping=1e-2)
    cov = x.T @ x / 50
    expected = cov + 1e-2 * np.mean(np.diag(cov)) * np.eye(4)
    np.testing.assert_allclose(lower @ lower.T, expected, atol=1e-10)
    assert np.allclose(lower, np.tril(lower))


def test_activation_scales_are_mean_magnitude_to_alpha():
    x = np.array([[1.0, -4.0], [-3.0, 0.0]])
    np.testing.assert_allclose(lr.activation_scales(x, alpha=0.5), [np.sqrt(2.0), np.sqrt(2.0)])


def test_rank_rules_and_parameter_formula():
    assert lr.lowrank_param_count(256, 1024, 10, bias=True) == 10 * 1280 + 1024
    assert lr.break_even_rank(256, 256) == 127  # 128 * 512 == 256 * 256 saves nothing
    assert lr.break_even_rank(4, 4) == 1
    r = lr.rank_for_ratio(256, 1024, 0.6)  # the largest rank within 60 % of the weights
    assert r * 1280 <= 0.6 * 256 * 1024 < (r + 1) * 1280
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert lr.rank_for_energy(s, 9 / 14) == 1
    assert lr.rank_for_energy(s, 0.9) == 2
    assert lr.rank_for_energy(s, 1.0) == 3


def test_allocation_meets_budget_and_favours_sensitive_layers():
    spectra = [np.linspace(2, 1, 20), np.linspace(2, 1, 20)]
    dims = [(20, 20), (20, 20)]
    budget = 16 * 40
    even = lr.allocate_ranks(spectra, dims, budget)
    assert even == [8, 8]
    skewed = lr.allocate_ranks(spectra, dims, budget, weights=[10.0, 1.0])
    assert skewed[0] > skewed[1] and sum(skewed) * 40 <= budget
    assert max(skewed) <= lr.break_even_rank(20, 20)
    with pytest.raises(TfcompressError, match="budget"):
        lr.allocate_ranks(spectra, dims, 10)


@pytest.mark.parametrize("rank", [0, 9, 2.5])
def test_bad_rank_is_rejected(rank):
    with pytest.raises(TfcompressError, match="rank must be"):
        lr.truncated_svd(RNG.normal(size=(8, 10)), rank)


@pytest.mark.parametrize("value", [0, 1.5, -0.1])
def test_energy_outside_unit_interval_is_rejected(value):
    with pytest.raises(TfcompressError, match=r"energy must be a number in \(0, 1\]"):
        lr.rank_for_energy(np.ones(4), value)


def test_aware_method_needs_inputs():
    with pytest.raises(TfcompressError, match="needs calibration"):
        lr.input_transform("svd-llm", None)
    with pytest.raises(TfcompressError, match="method must be one of"):
        lr.input_transform("qr", np.ones((3, 3)))


def test_cp_reconstructs_a_tensor_of_known_rank():
    factors = [RNG.normal(size=(d, 3)) for d in (8, 4, 6)]
    tensor = tens.cp_to_tensor(factors)
    found = tens.cp_decompose(tensor, 3)
    assert [f.shape for f in found] == [(8, 3), (4, 3), (6, 3)]
    np.testing.assert_allclose(tens.cp_to_tensor(found), tensor, atol=1e-4)
    assert tens.cp_param_count(tensor.shape, 3) == 3 * 18


def test_tucker_reconstructs_a_tensor_of_known_multilinear_rank():
    core = RNG.normal(size=(3, 2, 4))
    factors = [RNG.normal(size=(7, 3)), RNG.normal(size=(5, 2)), RNG.normal(size=(9, 4))]
    tensor = tens.tucker_to_tensor(core, factors)
    found_core, found = tens.tucker_decompose(tensor, (3, 2, 4))
    np.testing.assert_allclose(tens.tucker_to_tensor(found_core, found), tensor, atol=1e-4)
    partial_core, partial = tens.tucker_decompose(tensor, (3, 4), modes=(0, 2))
    assert partial_core.shape == (3, 5, 4)
    np.testing.assert_allclose(tens.tucker_to_tensor(partial_core, partial, (0, 2)), tensor,
                               atol=1e-4)
    with pytest.raises(TfcompressError, match="rank of mode 1"):
        tens.tucker_decompose(tensor, (3, 6, 4))


def test_tucker2_rank_for_ratio_respects_the_budget():
    r = tens.tucker2_rank_for_ratio(9, 16, 32, 0.5)
    assert tens.tucker2_param_count(9, 16, 32, r, r) <= 0.5 * 9 * 16 * 32
    assert tens.tucker2_param_count(9, 16, 32, r + 1, r + 1) > 0.5 * 9 * 16 * 32
