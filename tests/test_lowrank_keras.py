"""factorize() on real Keras models: exactness of the swap, counts, kept layers, round trips."""

import keras
import numpy as np
import pytest

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.core.layers import (
    copy_model,
    iter_layers,
    kernel_matrix,
    select_layers,
    set_kernel_matrix,
)
from tfcompress.core.saving import compression_state
from tfcompress.errors import TfcompressError
from tfcompress.lowrank import FactorizeConfig, LowRankDense, factorize
from tfcompress.lowrank import tensor as tens
from tfcompress.lowrank.svd import truncated_svd
from tfcompress.models import build_gpt

IDS = np.random.default_rng(0).integers(0, 256, (2, 32)).astype("int32")


@pytest.fixture(scope="module")
def gpt():
    keras.utils.set_random_seed(0)
    return build_gpt("test-tiny", vocab_size=256)


def _reconstructed(model, factorized):
    """A copy of ``model`` whose factorized kernels are set to ``u @ v`` (dense again)."""
    clone = copy_model(model)
    layers = dict(select_layers(clone, types=None, require=False))
    for plan in factorized.factorization:
        if plan.factorized:
            set_kernel_matrix(layers[plan.path], plan.factors["u"] @ plan.factors["v"])
    return clone


def test_full_rank_lowrank_dense_reproduces_dense():
    dense = keras.layers.Dense(6, activation="gelu")
    x = np.random.default_rng(1).normal(size=(3, 5, 4)).astype("float32")
    dense(x)
    dense.bias.assign(np.arange(6, dtype="float32"))
    u, v = truncated_svd(dense.kernel.numpy(), 4)
    layer = LowRankDense(4, output_dims=(6,), activation="gelu")
    layer.build(x.shape)
    layer.set_factors(u, v, dense.bias.numpy())
    np.testing.assert_allclose(layer(x), dense(x), atol=1e-5)


def test_full_rank_factors_of_an_attention_output_projection(gpt):
    proj = gpt.get_layer("block0_attn")._output_dense  # kernel (heads, head_dim, d_model)
    x = np.random.default_rng(2).normal(size=(2, 5, *proj.kernel.shape[:2])).astype("float32")
    u, v = truncated_svd(kernel_matrix(proj), 32)
    layer = LowRankDense(32, output_dims=(32,), input_rank=2)
    layer.build(x.shape)
    layer.set_factors(u, v, proj.bias.numpy())
    np.testing.assert_allclose(layer(x), proj(x), atol=1e-5)


def test_factorize_gpt_matches_formula_and_reconstruction(gpt):
    before = gpt.get_weights()
    small = factorize(gpt, rank=6, method="svd", verbose=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, gpt.get_weights(), strict=True))
    plans = small.factorization
    expected = gpt.count_params() - sum(
        p.shape[0] * p.shape[1] - 6 * (p.shape[0] + p.shape[1]) for p in plans)
    assert all(p.factorized for p in plans) and small.count_params() == expected
    kinds = {type(la).__name__ for path, la in iter_layers(small)
             if ("mlp" in path or "attn/" in path) and la.trainable_weights}
    assert kinds == {"LowRankDense"}
    np.testing.assert_allclose(small(IDS), _reconstructed(gpt, small)(IDS), atol=1e-4)


def test_rank_that_saves_nothing_leaves_the_layer_alone(gpt, capsys):
    small = factorize(gpt, rank=16, method="svd", include="attn", verbose=True)  # 32x32 kernels
    out = capsys.readouterr().out
    assert "does not save parameters (break-even 15)" in out
    assert not any(p.factorized for p in small.factorization)
    assert small.count_params() == gpt.count_params()


def test_saved_loaded_and_tflite_models_agree(gpt, tmp_path):
    small = factorize(gpt, target_ratio=0.5, method="svd-llm", calibration=IDS, verbose=False)
    expected = np.asarray(small(IDS))
    small.save(tmp_path / "small.keras")
    loaded = keras.models.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(loaded(IDS), expected, atol=1e-5)
    assert loaded.count_params() == small.count_params() < gpt.count_params()
    result = tfcompress.export_tflite(loaded, tmp_path / "small.tflite", seq_len=32, sample=IDS)
    dense = tfcompress.export_tflite(gpt, tmp_path / "dense.tflite", seq_len=32, sample=IDS)
    assert result.max_abs_error < 1e-3 and result.bytes < dense.bytes


def test_factorized_model_fine_tunes_with_fit(gpt):
    from tfcompress.models.training import compile_lm

    small = factorize(gpt, target_ratio=0.5, method="asvd", calibration=IDS, verbose=False)
    start = [w.numpy().copy() for w in small.trainable_weights]
    compile_lm(small, 1e-2)
    history = small.fit(IDS, np.roll(IDS, -1, 1), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(start, small.trainable_weights,
                                                             strict=True))


def test_sensitivity_allocation_meets_the_budget(gpt):
    small = factorize(gpt, target_ratio=0.5, method="svd-llm", allocation="sensitivity",
                      calibration=IDS, verbose=False)
    plans = small.factorization
    assert sum(p.params_after for p in plans) <= 0.5 * sum(p.params_before for p in plans)
    assert len({p.rank for p in plans}) > 1


def test_sequential_conv_and_embedding_methods():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((12,), dtype="int32"),
                              keras.layers.Embedding(50, 16, name="embed"),
                              keras.layers.Conv1D(24, 3, padding="same", name="conv"),
                              keras.layers.Dense(8, name="head")])
    x = np.random.default_rng(3).integers(0, 50, (2, 12)).astype("int32")
    for method in ("tucker", "cp", "svd"):
        small = factorize(model, rank=4, types=("Conv1D", "Embedding"), conv_method=method,
                          verbose=False)
        plans = {p.path.split("/")[-1]: p for p in small.factorization}
        assert all(p.factorized for p in plans.values())
        ref = keras.models.clone_model(model)
        ref.set_weights(model.get_weights())
        emb, conv = plans["embed"].factors, plans["conv"]
        ref.get_layer("embed").embeddings.assign(emb["u"] @ emb["v"])
        ref.get_layer("conv").kernel.assign(_conv_kernel(method, conv.factors))
        np.testing.assert_allclose(small(x), ref(x), atol=1e-4)
        assert small.count_params() < model.count_params()


def _conv_kernel(method, f):
    if method == "tucker":
        return tens.tucker_to_tensor(f["core"], f["factors"], (1, 2))
    if method == "cp":
        return tens.cp_to_tensor(f["cp"])
    return (f["u"] @ f["v"]).reshape(3, 16, 24)


class _Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.blocks = [keras.layers.Dense(24, activation="relu") for _ in range(2)]
        self.head = keras.layers.Dense(5)

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_subclassed_model_in_place():
    model = _Sub()
    x = np.random.default_rng(4).normal(size=(3, 24)).astype("float32")
    model(x)
    small = factorize(model, rank=3, method="svd", inplace=True, verbose=False)
    assert small is model
    # nested swaps are recorded by path, so a .keras file of a registered class reloads them
    assert sorted(compression_state(model)["layers"]) == sorted(
        la.name for la in [*model.blocks, model.head])
    assert [type(b).__name__ for b in model.blocks] == ["LowRankDense"] * 2
    assert type(model.head).__name__ == "LowRankDense"
    assert model.count_params() == 2 * (3 * 48 + 24) + 3 * 29 + 5


def test_keras_hub_gpt2_backbone(tiny_gpt2, tmp_path):
    backbone, batch = tiny_gpt2(hidden_dim=32, seq_len=16, seed=2)
    small = factorize(backbone, rank=8, method="svd-llm", calibration=[batch], verbose=False)
    assert sum(p.factorized for p in small.factorization) == 6  # q, k, v, out, 2 x MLP
    assert small.count_params() < backbone.count_params()
    np.testing.assert_allclose(small(batch), _reconstructed(backbone, small)(batch), atol=1e-4)
    small.save(tmp_path / "small.keras")  # stand-ins inside TransformerDecoder reload
    again = keras.models.load_model(tmp_path / "small.keras")
    assert again.count_params() == small.count_params()
    np.testing.assert_array_equal(again(batch), small(batch))


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"rank": 40}, r"rank \(layer .*\) must be between 1 and min\(d_in, d_out\) = 32"),
    ({"energy": 1.5}, r"energy must be a number in \(0, 1\]"),
    ({"target_ratio": 1.0}, r"target_ratio must be a number in \(0, 1\)"),
    ({"rank": 2, "include": "nothing_like_this"}, "no layer matched"),
    ({"rank": 2, "energy": 0.5}, "exactly one of rank, energy or target_ratio"),
    ({"target_ratio": 0.5, "method": "svd-llm"}, "need calibration inputs"),
    ({"rank": 2, "allocation": "sensitivity"}, "needs target_ratio"),
])
def test_bad_input_raises_clear_errors(gpt, kwargs, message):
    with pytest.raises(TfcompressError, match=message):
        factorize(gpt, verbose=False, **kwargs)


def test_config_round_trips():
    config = FactorizeConfig(method="asvd", target_ratio=0.6, include=["a", "b"])
    assert FactorizeConfig.from_config(config.get_config()) == config
