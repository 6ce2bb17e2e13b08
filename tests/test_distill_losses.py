"""Distillation math against hand/NumPy computations on tiny logits."""

import numpy as np
import pytest

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.distill import losses as L
from tfcompress.errors import TfcompressError

RNG = np.random.default_rng(0)
T_LOGITS = RNG.normal(size=(2, 3, 5)).astype(np.float32) * 2
S_LOGITS = RNG.normal(size=(2, 3, 5)).astype(np.float32)
TARGETS = np.array([[0, 1, 4], [3, 2, 2]])


def softmax(z, t=1.0):
    e = np.exp((z - z.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)


def kl(p, q):
    return (p * np.log(p / q)).sum(-1)


def test_forward_kl_by_hand_on_two_tokens():
    # p = softmax([log 3, 0]) = (3/4, 1/4); q = uniform over 2 tokens.
    t = np.array([[np.log(3.0), 0.0]])
    s = np.zeros((1, 2))
    expected = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    np.testing.assert_allclose(np.asarray(L.forward_kl(t, s)), [expected], rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_divergences_match_numpy_with_t_squared_scaling(temperature):
    p, q = softmax(T_LOGITS, temperature), softmax(S_LOGITS, temperature)
    t2 = temperature**2
    beta = 0.3
    m = beta * p + (1 - beta) * q
    expected = {
        "forward_kl": t2 * kl(p, q),
        "reverse_kl": t2 * kl(q, p),
        "soft_ce": t2 * -(p * np.log(q)).sum(-1),
        "jsd": t2 * (beta * kl(p, m) + (1 - beta) * kl(q, m)),
    }
    for name, value in expected.items():
        got = np.asarray(L.divergence(name, T_LOGITS, S_LOGITS, temperature, beta=beta))
        np.testing.assert_allclose(got, value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_divergences_vanish_when_student_equals_teacher():
    for name in L.DIVERGENCES:
        got = np.asarray(L.divergence(name, T_LOGITS, T_LOGITS, 2.0))
        if name == "soft_ce":  # the teacher's entropy remains
            expected = 4.0 * -(softmax(T_LOGITS, 2) * np.log(softmax(T_LOGITS, 2))).sum(-1)
            np.testing.assert_allclose(got, expected, rtol=1e-5)
        else:
            np.testing.assert_allclose(got, 0.0, atol=1e-5, err_msg=name)


def test_hard_cross_entropy_matches_numpy():
    logp = np.log(softmax(S_LOGITS))
    expected = -np.take_along_axis(logp, TARGETS[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(L.hard_cross_entropy(TARGETS, S_LOGITS)), expected,
                               rtol=1e-5)


def test_alpha_zero_and_one_reduce_to_pure_terms():
    hard = float(L.masked_mean(L.hard_cross_entropy(TARGETS, S_LOGITS)))
    soft = float(L.masked_mean(L.forward_kl(T_LOGITS, S_LOGITS, 2.0)))
    total1, h, s = L.kd_loss(TARGETS, S_LOGITS, T_LOGITS, alpha=1.0, temperature=2.0)
    total0, _, _ = L.kd_loss(TARGETS, S_LOGITS, T_LOGITS, alpha=0.0, temperature=2.0)
    total_mid, _, _ = L.kd_loss(TARGETS, S_LOGITS, T_LOGITS, alpha=0.25, temperature=2.0)
    np.testing.assert_allclose([float(total1), float(total0)], [hard, soft], rtol=1e-6)
    np.testing.assert_allclose(float(total_mid), 0.25 * hard + 0.75 * soft, rtol=1e-6)
    np.testing.assert_allclose([float(h), float(s)], [hard, soft], rtol=1e-6)


def test_masked_positions_change_nothing():
    mask = np.array([[1, 1, 0], [1, 0, 1]], dtype=np.float32)
    garbage_s, garbage_t = S_LOGITS.copy(), T_LOGITS.copy()
    garbage_s[mask == 0] = 100.0 * RNG.normal(size=(2, 5))
    garbage_t[mask == 0] = -50.0
    other_targets = TARGETS.copy()
    other_targets[mask == 0] = 0
    for name in L.DIVERGENCES:
        a = L.kd_loss(TARGETS, S_LOGITS, T_LOGITS, mask, 0.5, 2.0, name)
        b = L.kd_loss(other_targets, garbage_s, garbage_t, mask, 0.5, 2.0, name)
        np.testing.assert_allclose([float(v) for v in a], [float(v) for v in b], rtol=1e-6)
    kept = L.forward_kl(T_LOGITS, S_LOGITS, 2.0).numpy()[mask == 1].mean()
    np.testing.assert_allclose(float(L.masked_mean(L.forward_kl(T_LOGITS, S_LOGITS, 2.0), mask)),
                               kept, rtol=1e-6)


def test_densify_top_k_full_vocab_is_exact_and_partial_renormalises():
    values, indices = np.sort(T_LOGITS, -1)[..., ::-1], np.argsort(-T_LOGITS, -1)
    full = np.asarray(L.densify_top_k(values.copy(), indices, 5))
    np.testing.assert_allclose(softmax(full), softmax(T_LOGITS), rtol=1e-6)
    top2 = softmax(np.asarray(L.densify_top_k(values[..., :2].copy(), indices[..., :2], 5)))
    p = softmax(T_LOGITS)
    kept = np.take_along_axis(p, indices[..., :2], -1)
    np.testing.assert_allclose(np.take_along_axis(top2, indices[..., :2], -1),
                               kept / kept.sum(-1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(top2.sum(-1), 1.0, rtol=1e-6)


def test_feature_mse_masks_positions():
    a, b = RNG.normal(size=(1, 3, 4)), RNG.normal(size=(1, 3, 4))
    mask = np.array([[1.0, 0.0, 1.0]])
    expected = ((a - b) ** 2).mean(-1)[mask == 1].mean()
    np.testing.assert_allclose(float(L.feature_mse(a, b, mask)), expected, rtol=1e-5)


def test_uniform_layer_map():
    assert L.uniform_layer_map(2, 4) == [1, 3]
    assert L.uniform_layer_map(3, 3) == [0, 1, 2]
    assert L.uniform_layer_map(1, 4) == [3]
    assert L.uniform_layer_map(3, 6) == [1, 3, 5]
    with pytest.raises(TfcompressError, match="n_student=0"):
        L.uniform_layer_map(0, 4)


def test_schedule_values():
    assert L.schedule_value("constant", 3.0, 1.0, 0.7) == 3.0
    assert L.schedule_value("linear", 4.0, 2.0, 0.25) == pytest.approx(3.5)
    assert L.schedule_value("cosine", 4.0, 2.0, 0.0) == pytest.approx(4.0)
    assert L.schedule_value("cosine", 4.0, 2.0, 0.5) == pytest.approx(3.0)
    assert L.schedule_value("cosine", 4.0, 2.0, 1.0) == pytest.approx(2.0)
    assert L.schedule_value("linear", 4.0, 2.0, 7.0) == pytest.approx(2.0)
    with pytest.raises(TfcompressError, match="schedule kind must be one of"):
        L.schedule_value("step", 1.0, 0.0, 0.5)


@pytest.mark.parametrize(("check", "value", "message"), [
    (L.check_alpha, 1.5, r"alpha must be a number in \[0, 1\]"),
    (L.check_alpha, -0.1, r"alpha must be a number in \[0, 1\]"),
    (L.check_temperature, 0.0, "temperature must be a number > 0"),
    (L.check_temperature, -2, "temperature must be a number > 0"),
])
def test_bad_alpha_and_temperature_raise(check, value, message):
    with pytest.raises(TfcompressError, match=message):
        check(value)


def test_bad_divergence_and_beta_raise():
    with pytest.raises(TfcompressError, match="divergence must be one of"):
        L.check_divergence("kl", 0.5)
    with pytest.raises(TfcompressError, match=r"beta must be a number in \(0, 1\)"):
        L.check_divergence("jsd", 1.0)


def test_reverse_kl_refuses_a_partial_top_k_cache_in_both_kd_paths():
    from tfcompress.distill import SoftTargetLoss

    values, indices = np.sort(T_LOGITS, -1)[..., ::-1], np.argsort(-T_LOGITS, -1)
    with pytest.raises(TfcompressError, match="top 2 of 5 logits"):
        L.densify_top_k(values[..., :2].copy(), indices[..., :2], 5, "reverse_kl")
    assert L.densify_top_k(values.copy(), indices, 5, "reverse_kl").shape == T_LOGITS.shape
    # y_true of SoftTargetLoss: target id, then top-k values, then their indices
    y_true = np.concatenate([indices[..., :1], values[..., :2], indices[..., :2]], -1)
    with pytest.raises(TfcompressError, match="reverse_kl needs the full teacher"):
        SoftTargetLoss(divergence="reverse_kl", top_k=2)(y_true.astype("float32"), S_LOGITS)
