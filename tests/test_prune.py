"""Pruning math on NumPy arrays: scores, masks, SparseGPT, config."""

import numpy as np
import pytest

from tfcompress.core.stats import hessian
from tfcompress.errors import TfcompressError
from tfcompress.prune.config import PruneConfig
from tfcompress.prune.masks import (
    global_masks,
    mask_sparsity,
    nm_mask,
    parse_nm,
    units_to_keep,
    unstructured_mask,
)
from tfcompress.prune.scores import taylor_scores, wanda_scores
from tfcompress.prune.sparsegpt import sparsegpt_prune

RNG = np.random.default_rng(0)


def correlated_inputs(rows=512, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("per_output", [False, True])
def test_unstructured_mask_exact_sparsity(sparsity, per_output):
    scores = RNG.normal(size=(20, 10))
    mask = unstructured_mask(scores, sparsity, per_output=per_output)
    assert mask_sparsity(mask) == pytest.approx(round(sparsity * 20) / 20 if per_output
                                                else round(sparsity * 200) / 200)
    if per_output:
        assert set((mask == 0).sum(axis=0)) == {round(sparsity * 20)}
    # kept weights outrank pruned ones within each comparison group
    groups = [(mask[:, j], scores[:, j]) for j in range(10)] if per_output else [(mask, scores)]
    for m, s in groups:
        if 0 < sparsity:
            assert s[m == 1].min() > s[m == 0].max()


def test_global_masks_one_threshold():
    scores = {"small": RNG.uniform(0, 1, (10, 10)), "big": RNG.uniform(1, 2, (10, 30))}
    masks = global_masks(scores, 0.25)
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    assert zeros == 100  # 25 % of 400
    assert (masks["small"] == 0).all() and (masks["big"] == 1).all()


def test_nm_mask_keeps_n_largest_per_group_along_inputs():
    scores = RNG.normal(size=(16, 6))
    mask = nm_mask(scores, 2, 4)
    groups = mask.reshape(4, 4, 6)
    assert (groups.sum(axis=1) == 2).all()
    expected = np.zeros_like(scores)
    for g in range(4):
        for j in range(6):
            top = np.argsort(scores[4 * g : 4 * g + 4, j])[-2:]
            expected[4 * g + top, j] = 1
    np.testing.assert_array_equal(mask, expected)


def test_wanda_scores_and_mask_match_numpy():
    w, x = RNG.normal(size=(8, 3)), RNG.normal(size=(50, 8))
    norms = np.sqrt((x**2).sum(axis=0))
    scores = wanda_scores(w, x)
    for j in range(8):
        for k in range(3):
            assert scores[j, k] == pytest.approx(abs(w[j, k]) * norms[j])
    mask = unstructured_mask(scores, 0.5, per_output=True)
    for k in range(3):
        kept = set(np.argsort(-scores[:, k])[:4])
        assert set(np.flatnonzero(mask[:, k])) == kept


def test_wanda_rejects_wrong_width():
    with pytest.raises(TfcompressError, match=r"calibration inputs must be \(rows, 8\)"):
        wanda_scores(np.ones((8, 2)), np.ones((5, 7)))


def test_taylor_accumulates_absolute_products():
    w = np.array([[1.0, -2.0]])
    grads = [np.array([[1.0, 1.0]]), np.array([[-1.0, 0.5]])]
    np.testing.assert_allclose(taylor_scores(w, grads), [[2.0, 3.0]])
    with pytest.raises(TfcompressError, match="grads must have the kernel's shape"):
        taylor_scores(w, [np.ones((2, 2))])


def reference_sparsegpt(w, h, sparsity, nm=None, damping=0.01):
    """Column-by-column OBS with an explicitly updated inverse Hessian (no Cholesky, no
    blocks): the computation SparseGPT's Cholesky/blocked form is equivalent to."""
    h = h + damping * np.mean(np.diag(h)) * np.eye(len(h))
    hinv = np.linalg.inv(h)
    w = w.T.copy()  # (d_out, d_in)
    d_out, d_in = w.shape
    diag = np.empty(d_in)  # [H^-1]_ii after eliminating columns < i
    tmp = hinv.copy()
    for i in range(d_in):
        diag[i] = tmp[i, i]
        tmp = tmp - np.outer(tmp[:, i], tmp[i, :]) / tmp[i, i]
    keep = np.ones_like(w)
    if nm is None:
        sal = w**2 / diag
        keep.ravel()[np.argsort(sal.ravel(), kind="stable")[: int(round(sparsity * w.size))]] = 0
    for i in range(d_in):
        if nm is not None and i % nm[1] == 0:
            sal = w[:, i : i + nm[1]] ** 2 / diag[i : i + nm[1]]
            for r in range(d_out):
                keep[r, i + np.argsort(sal[r], kind="stable")[: nm[1] - nm[0]]] = 0
        err = w[:, i] * (1 - keep[:, i]) / hinv[i, i]
        w -= np.outer(err, hinv[i, :])
        hinv = hinv - np.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
        w[:, i] *= keep[:, i]
    return w.T, keep.T


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_matches_numpy_reference(nm):
    x = correlated_inputs()
    w = RNG.normal(size=(16, 5))
    h = hessian(x, 16)
    new_w, mask = sparsegpt_prune(w, h, 0.5, nm=nm, block_size=16)
    ref_w, ref_mask = reference_sparsegpt(w, h, 0.5, nm)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(new_w, ref_w, atol=1e-4)
    if nm:  # lazy block updates are exact: smaller blocks give the same result
        small_w, _ = sparsegpt_prune(w, h, 0.5, nm=nm, block_size=4)
        np.testing.assert_allclose(small_w, new_w, atol=1e-4)
        assert ((new_w != 0).reshape(4, 4, 5).sum(axis=1) == 2).all()


def test_sparsegpt_reconstruction_beats_plain_masking():
    x = correlated_inputs(d=32)
    w = RNG.normal(size=(32, 8))
    new_w, mask = sparsegpt_prune(w, hessian(x, 32), 0.5, block_size=8)
    assert mask_sparsity(mask) == 0.5 and np.all(new_w[mask == 0] == 0)
    error = np.linalg.norm(x @ w - x @ new_w)
    assert error < 0.9 * np.linalg.norm(x @ w - x @ (w * mask))


def test_sparsegpt_bad_input():
    with pytest.raises(TfcompressError, match=r"h must be \(4, 4\)"):
        sparsegpt_prune(np.ones((4, 2)), np.eye(3))
    with pytest.raises(TfcompressError, match="nm=.* needs 0 < N < M"):
        sparsegpt_prune(np.ones((6, 2)), np.eye(6), nm=(2, 4))


def test_units_to_keep_most_important_sorted():
    np.testing.assert_array_equal(units_to_keep([5, 1, 4, 2, 3], 0.4), [0, 2, 4])
    assert len(units_to_keep(np.ones(3), 0.9)) == 1


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "half"])
def test_sparsity_outside_range(bad):
    with pytest.raises(TfcompressError, match=r"sparsity must be a number in \[0, 1\)"):
        unstructured_mask(np.ones((2, 2)), bad)
    with pytest.raises(TfcompressError, match="sparsity"):
        PruneConfig(sparsity=bad)


@pytest.mark.parametrize("pattern", ["4:4", "4:2", "0:4", "2-4"])
def test_bad_nm_patterns(pattern):
    with pytest.raises(TfcompressError, match="N:M pattern"):
        parse_nm(pattern)
    with pytest.raises(TfcompressError, match="N:M pattern"):
        PruneConfig(pattern=pattern)


def test_nm_mask_needs_divisible_inputs():
    with pytest.raises(TfcompressError, match="d_in divisible by 4"):
        nm_mask(np.ones((6, 2)), 2, 4)


def test_config_round_trip_and_errors():
    from tensorflow_model_optimization.sparsity.keras import PolynomialDecay

    cfg = PruneConfig(schedule=PolynomialDecay(0.1, 0.6, 0, 50, frequency=5),
                      include=["a", "b"], scope="global")
    again = PruneConfig.from_config(cfg.get_config())
    assert again == cfg
    assert again.method_config().build_schedule()(50)[1].numpy() == pytest.approx(0.6)
    with pytest.raises(TfcompressError, match="method must be one of"):
        PruneConfig(method="random")
    with pytest.raises(TfcompressError, match="a schedule prunes by magnitude"):
        PruneConfig(method="wanda", schedule=PolynomialDecay(0.1, 0.6, 0, 50))
    with pytest.raises(TfcompressError, match="activation-aware criteria support"):
        PruneConfig(method="wanda", types=("Embedding",))
    with pytest.raises(TfcompressError, match="scope='global' needs"):
        PruneConfig(method="sparsegpt", scope="global")
