"""The GPT builder: shapes, parameter counts by hand, causality, serialization."""

import keras
import numpy as np
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.models import GPTConfig, build_gpt, gpt_param_count, preset


def test_param_count_matches_hand_calculation():
    # vocab 10, seq 6, d 4, 1 layer, 2 heads, d_ff 8, untied
    model = build_gpt(GPTConfig(vocab_size=10, seq_len=6, d_model=4, n_layers=1, n_heads=2, d_ff=8))
    embed, pos = 10 * 4, 6 * 4
    attention = 3 * (4 * 4 + 4) + (4 * 4 + 4)
    mlp = (4 * 8 + 8) + (8 * 4 + 4)
    norms = 2 * (4 + 4) + (4 + 4)
    head = 4 * 10 + 10
    assert model.count_params() == embed + pos + attention + mlp + norms + head == 294


def test_tied_head_shares_the_embedding():
    cfg = preset("test-tiny", tie_embeddings=True)
    model = build_gpt(cfg)
    assert model.count_params() == gpt_param_count(cfg)
    assert model.count_params() == gpt_param_count(preset("test-tiny")) - (32 * 256 + 256)


def test_outputs_are_causal():
    model = build_gpt("test-tiny")
    x = np.random.default_rng(0).integers(0, 256, (1, 32))
    y = x.copy()
    y[0, 20:] = (y[0, 20:] + 7) % 256
    a, b = model(x).numpy(), model(y).numpy()
    np.testing.assert_allclose(a[0, :20], b[0, :20], atol=1e-5)
    assert np.abs(a[0, 20:] - b[0, 20:]).max() > 1e-3


def test_round_trips_through_keras_file(tmp_path):
    model = build_gpt("test-tiny", tie_embeddings=True)
    x = np.arange(32)[None] % 256
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(model(x), again(x), atol=1e-6)


def test_bad_configs_raise():
    with pytest.raises(TfcompressError, match="unknown preset 'huge'"):
        build_gpt("huge")
    with pytest.raises(TfcompressError, match="divisible by n_heads"):
        GPTConfig(d_model=30, n_heads=4)
    with pytest.raises(TfcompressError, match="n_layers must be a positive integer"):
        GPTConfig(n_layers=0)


def test_config_round_trips():
    cfg = preset("student", vocab_size=300)
    assert GPTConfig.from_config(cfg.get_config()) == cfg


def test_lm_optimizer_warms_up_linearly_then_decays_to_a_tenth():
    from tfcompress.models.training import lm_optimizer

    opt = lm_optimizer(100, learning_rate=2e-3, warmup=0.1)
    lr = opt.learning_rate if callable(opt.learning_rate) else opt._learning_rate
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(1e-3)  # half-way through the 10 warm-up steps
    assert float(lr(10)) == pytest.approx(2e-3)
    assert float(lr(110)) == pytest.approx(2e-4)  # cosine floor: alpha 0.1
    assert opt.weight_decay == 0.01 and opt.clipnorm == 1.0
    assert float(lm_optimizer(learning_rate=3e-4).learning_rate) == pytest.approx(3e-4)
