"""Residual-stream rotation: Hadamard and rotation matrices on arrays, then rotated copies of
tiny Llama-family models (our port tied and untied, KerasHub Llama and Qwen2) that compute the
same logits, keep our tied port tied, rotate the MLP online, spread a planted outlier, refuse
what they cannot rotate and reload."""

import keras
import numpy as np
import pytest

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.core.hadamard import (
    hadamard_factors,
    kron_matmul,
    kron_matrix,
    paley_hadamard,
    sylvester,
)
from tfcompress.errors import TfcompressError
from tfcompress.models import LlamaConfig, build_gpt, build_llama
from tfcompress.quantize import QuantizeConfig, hadamard, quantize, rotate, rotation_matrix
from tfcompress.quantize.rotate import mix_residual

VOCAB, D = 64, 24  # 24 = 2 x 12: a Sylvester factor times Paley's (q = 11)


def test_paley_hadamard_by_hand():
    # q = 3: Legendre symbols chi(1) = 1, chi(2) = -1; H = I + [[0, 1], [-1, C]]
    expected = [[1, 1, 1, 1], [-1, 1, 1, -1], [-1, -1, 1, 1], [-1, 1, -1, 1]]
    np.testing.assert_array_equal(paley_hadamard(3), expected)
    with pytest.raises(TfcompressError, match="q must be a prime with q % 4 == 3, got 5"):
        paley_hadamard(5)


@pytest.mark.parametrize("d, built", [(1, True), (12, True), (24, True), (64, True),
                                      (576, True), (9, False), (18, False)])
def test_hadamard_and_rotation_are_orthogonal(d, built):
    h = hadamard(d)
    assert (h is not None) == built
    if built:
        assert set(np.unique(h)) <= {-1.0, 1.0}
        np.testing.assert_array_equal(h @ h.T, d * np.eye(d))
    q = rotation_matrix(d, seed=3)
    np.testing.assert_allclose(q @ q.T, np.eye(d), atol=1e-12)
    if built:  # the random signs flip rows of the plain Hadamard
        plain = rotation_matrix(d, seed=None)
        np.testing.assert_allclose(plain, h / np.sqrt(d))
        np.testing.assert_allclose(np.abs(q), np.abs(plain))
    with pytest.raises(TfcompressError, match="d must be a positive integer, got 0"):
        rotation_matrix(0)


def _port(tie: bool):
    keras.utils.set_random_seed(0)
    model = build_llama(LlamaConfig(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=4,
                                    n_kv_heads=2, d_ff=40, tie_embeddings=tie))
    rng = np.random.default_rng(1)
    for v in model.weights:  # norm scales far from 1, so folding them matters
        if v.path.endswith("scale"):
            v.assign(rng.uniform(0.3, 3.0, v.shape))
    return model


def _hub(kind: str):
    import keras_hub

    keras.utils.set_random_seed(0)
    hub = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=D, intermediate_dim=40,
               num_query_heads=4, num_key_value_heads=2)
    if kind == "llama":  # KerasHub's Llama unties by default: tie it, as SmolLM2 is
        lm = keras_hub.models.LlamaCausalLM(
            keras_hub.models.LlamaBackbone(tie_word_embeddings=True, **hub), preprocessor=None)
    else:
        lm = keras_hub.models.Qwen2CausalLM(keras_hub.models.QwenBackbone(**hub),
                                             preprocessor=None)
    rng = np.random.default_rng(1)
    for v in lm.weights:
        if v.path.endswith("scale") or "bias" in v.path:
            v.assign(rng.uniform(0.3, 3.0, v.shape))
    return lm


def _inputs(model, ids):
    if hasattr(model, "backbone"):
        return {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    return ids


def _logits(model, ids):
    return np.asarray(model(_inputs(model, ids)))


def _max_rel_diff(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("build", [lambda: _port(True), lambda: _port(False),
                                   lambda: _hub("llama"), lambda: _hub("qwen2")],
                         ids=["port_tied", "port_untied", "hub_llama", "hub_qwen2"])
def test_rotated_copy_computes_the_same_logits(build):
    model = build()
    ids = np.random.default_rng(2).integers(0, VOCAB, (2, 9)).astype("int32")
    before = [v.numpy().copy() for v in model.weights]
    expected = _logits(model, ids)
    rotated = rotate(model, verbose=0)
    assert _max_rel_diff(expected, _logits(rotated, ids)) <= 1e-3
    # the user's model is untouched (and stays tied if it was)
    for v, old in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), old)
    # every norm scale is folded away (a tied port's final one left uniform, its mean)
    scales = [v.numpy() for v in rotated.weights if v.path.endswith("scale")]
    assert len(scales) == 5 and all(np.array_equal(s, np.ones(D)) for s in scales[:4])
    assert np.all(scales[4] == scales[4][0])


def test_tied_port_stays_tied_with_a_d_by_d_final_mix_and_hub_comes_back_untied():
    tied = _port(True)
    rotated = rotate(tied, verbose=0)
    assert rotated.count_params() - tied.count_params() == D * D
    assert "lm_head" not in {la.name for la in rotated.layers}
    # the mix is the final norm's scale in the rotated basis: the norm keeps mean(g), the
    # mix x -> x (I + R), I + R = Q^T diag(g / mean(g)) Q
    q = rotation_matrix(D, seed=0)
    gamma = tied.get_layer("final_norm").scale.numpy()
    np.testing.assert_allclose(rotated.get_layer("final_norm").scale.numpy(), gamma.mean(),
                               rtol=1e-6)
    np.testing.assert_allclose(rotated.get_layer("final_mix").kernel.numpy() + np.eye(D),
                               q.T @ np.diag(gamma / gamma.mean()) @ q, atol=1e-6)
    np.testing.assert_allclose(rotated.get_layer("token_embedding").embeddings.numpy(),
                               tied.get_layer("token_embedding").embeddings.numpy() @ q,
                               atol=1e-6)
    for model in (_hub("llama"), _hub("qwen2")):
        rotated = rotate(model, verbose=0)
        assert rotated.count_params() - model.count_params() == VOCAB * D
        assert type(rotated) is type(model)
    untied = _port(False)
    assert rotate(untied, verbose=0).count_params() == untied.count_params()


def test_hadamard_factors_multiply_like_the_whole_matrix():
    # 1536 = 12 (Paley, q = 11) x 128 (Sylvester, as 16 x 8): SmolLM2's d_ff
    assert [f.shape[0] for f in hadamard_factors(1536)] == [12, 16, 8]
    assert [f.shape[0] for f in hadamard_factors(40)] == [20, 2]
    assert hadamard_factors(18) is None
    np.testing.assert_allclose(kron_matrix(hadamard_factors(1536)),
                               hadamard(1536) / np.sqrt(1536), atol=1e-12)
    # x = [1, 2, 3, 4] times Sylvester's 4 x 4 / 2: [10, -2, -4, 0] / 2, by hand
    np.testing.assert_allclose(kron_matmul(np.array([[1.0, 2, 3, 4]]), [sylvester(2) / 2 ** .5]
                                           * 2, np), [[5.0, -1.0, -2.0, 0.0]])
    x = np.random.default_rng(0).standard_normal((3, 40))
    expected = x @ hadamard(40) / np.sqrt(40)
    np.testing.assert_allclose(kron_matmul(x, hadamard_factors(40), np), expected, atol=1e-12)
    got = kron_matmul(x.astype("float32"), hadamard_factors(40), keras.ops)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_online_hadamard_before_the_down_projection_is_exact(tie, tmp_path):
    model = _port(tie)
    ids = np.random.default_rng(2).integers(0, VOCAB, (2, 9)).astype("int32")
    rotated = rotate(model, online=True, verbose=0)
    assert _max_rel_diff(_logits(model, ids), _logits(rotated, ids)) <= 1e-3
    layers = {la.name for la in rotated.layers}
    assert {"block0_mlp_hadamard", "block1_mlp_hadamard"} <= layers
    # identity residual rotation: the down kernel is H^T W, nothing else moved
    folded = rotate(model, matrix=np.eye(D), online=True, verbose=0)
    h = hadamard(40) / np.sqrt(40)
    np.testing.assert_allclose(folded.get_layer("block1_mlp_down").kernel.numpy(),
                               h.T @ model.get_layer("block1_mlp_down").kernel.numpy(),
                               atol=1e-6)
    # rotating again adds no second online Hadamard, and the model reloads from .keras
    again = rotate(rotated, seed=5, online=True, verbose=0)
    assert _max_rel_diff(_logits(model, ids), _logits(again, ids)) <= 1e-3
    assert again.count_params() == rotated.count_params()
    again.save(tmp_path / "online.keras")
    reloaded = keras.saving.load_model(tmp_path / "online.keras")
    np.testing.assert_allclose(_logits(reloaded, ids), _logits(again, ids), rtol=1e-5,
                               atol=1e-6)


def test_rotation_spreads_a_planted_outlier_channel():
    model = _port(False)
    table = model.get_layer("token_embedding").embeddings
    planted = table.numpy()
    planted[:, 5] = 60.0  # one massive residual channel, as SmolLM2's 507
    table.assign(planted)
    ids = np.arange(VOCAB, dtype="int32")[None]

    def peak_to_rms(m):
        stream = keras.Model(m.inputs, m.get_layer("block1_add2").output)(ids).numpy()[0]
        return np.mean(np.abs(stream).max(-1) / np.sqrt((stream ** 2).mean(-1)))

    before, after = peak_to_rms(model), peak_to_rms(rotate(model, verbose=0))
    assert before > 4.0  # ~sqrt(24) = 4.9 when one channel holds all the energy
    assert after < before / 2


def test_bad_input_is_refused_before_any_work():
    gpt = build_gpt("test-tiny", vocab_size=VOCAB)
    with pytest.raises(TfcompressError, match=r"rotate supports llama .*model 'gpt'"):
        rotate(gpt, verbose=0)
    tied = _port(True)
    with pytest.raises(TfcompressError, match="ties its head to its embedding.*inplace=False"):
        rotate(tied, inplace=True, verbose=0)
    for seed in (-1, 1.5, True):
        with pytest.raises(TfcompressError, match="seed must be a non-negative integer or None"):
            rotate(tied, seed=seed, verbose=0)
    with pytest.raises(TfcompressError, match=r"matrix must be \(24, 24\).*got shape \(3, 3\)"):
        rotate(tied, matrix=np.eye(3), verbose=0)
    with pytest.raises(TfcompressError, match="matrix must be orthogonal"):
        rotate(tied, matrix=2 * np.eye(D), verbose=0)
    with pytest.raises(TfcompressError, match="online Hadamard.*inplace=False"):
        rotate(_port(False), online=True, inplace=True, verbose=0)
    with pytest.raises(TfcompressError, match="online=True needs a build_llama model.*"
                                              "LlamaCausalLM"):
        rotate(_hub("llama"), online=True, verbose=0)
    odd = build_llama(LlamaConfig(vocab_size=VOCAB, d_model=D, n_layers=1, n_heads=4,
                                  n_kv_heads=2, d_ff=18))
    with pytest.raises(TfcompressError, match="order d_ff = 18"):
        rotate(odd, online=True, verbose=0)
    q4 = quantize(_port(False), QuantizeConfig(method="rtn", bits=8))
    with pytest.raises(TfcompressError, match="already quantized"):
        rotate(q4, verbose=0)
    assert tied.get_layer("block0_attn_norm").scale.numpy().max() > 1.0  # not folded


def test_identity_matrix_only_folds_the_norm_scales():
    model = _port(False)
    folded = rotate(model, matrix=np.eye(D), verbose=0)
    gamma = model.get_layer("block0_attn_norm").scale.numpy()
    np.testing.assert_allclose(folded.get_layer("block0_attn_q").kernel.numpy(),
                               gamma[:, None] * model.get_layer("block0_attn_q").kernel.numpy(),
                               rtol=1e-6)
    np.testing.assert_array_equal(folded.get_layer("block0_attn_out").kernel.numpy(),
                                  model.get_layer("block0_attn_out").kernel.numpy())
    final = model.get_layer("final_norm").scale.numpy()
    np.testing.assert_allclose(folded.get_layer("lm_head").kernel.numpy(),
                               final[:, None] * model.get_layer("lm_head").kernel.numpy(),
                               rtol=1e-6)


def test_inplace_rotates_an_untied_model_itself(tmp_path):
    model = _port(False)
    ids = np.random.default_rng(2).integers(0, VOCAB, (1, 7)).astype("int32")
    expected = _logits(model, ids)
    assert rotate(model, seed=None, inplace=True, verbose=0) is model
    assert _max_rel_diff(expected, _logits(model, ids)) <= 1e-3
    # the rotated model saves and reloads through .keras
    model.save(tmp_path / "rotated.keras")
    reloaded = keras.saving.load_model(tmp_path / "rotated.keras")
    np.testing.assert_allclose(_logits(reloaded, ids), _logits(model, ids), rtol=1e-6)


def test_rotated_hub_model_reloads_from_keras_file(tmp_path):
    rotated = rotate(_hub("qwen2"), verbose=0)
    ids = np.random.default_rng(2).integers(0, VOCAB, (1, 7)).astype("int32")
    rotated.save(tmp_path / "rotated.keras")
    reloaded = keras.saving.load_model(tmp_path / "rotated.keras")
    np.testing.assert_allclose(_logits(reloaded, ids), _logits(rotated, ids), rtol=1e-6)


def test_mix_residual_by_hand():
    # g = [2, 4]: the norm keeps mean 3, I + R = diag(2/3, 4/3) when q = I
    c, residual = mix_residual(np.array([2.0, 4.0]), np.zeros((2, 2)), np.eye(2))
    assert c == 3.0
    np.testing.assert_allclose(residual, [[-1 / 3, 0.0], [0.0, 1 / 3]])
    # a 90-degree rotation swaps the two channels' scales
    q = np.array([[0.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_allclose(mix_residual(np.array([2.0, 4.0]), np.zeros((2, 2)), q)[1],
                               [[1 / 3, 0.0], [0.0, -1 / 3]], atol=1e-12)


def test_rotate_reaches_a_model_family_through_its_registration(monkeypatch):
    # the quantize layer knows no model family: without a registered one our port is refused,
    # and a family registered under another name (here delegating to the port's) is used
    import importlib

    from tfcompress.models import llama_rotation as port

    rotation = importlib.import_module("tfcompress.quantize.rotate")  # the verb shadows it

    tied = _port(True)
    monkeypatch.setattr(rotation, "_FAMILIES", {})
    with pytest.raises(TfcompressError, match=r"rotate supports keras_hub .*is none of them"):
        rotate(tied, verbose=0)
    plans = []

    def plan(model, tied_head, online):
        plans.append((model.name, tied_head, online))
        return port.port_plan(model, tied_head, online)

    rotation.register_rotation_family(
        rotation.RotationFamily("mine", port.port_stream, plan, port.port_rebuilt))
    assert rotation.architectures()[0] == "mine"
    rotated = rotate(tied, online=True, verbose=0)
    assert plans == [(tied.name, True, True)]
    ids = np.random.default_rng(2).integers(0, VOCAB, (2, 9)).astype("int32")
    np.testing.assert_allclose(_logits(rotated, ids), _logits(tied, ids), atol=2e-4, rtol=2e-4)
