"""Every method's real output goes through the same export verb and agrees with Keras."""

import numpy as np
import pytest

from tfcompress import (
    FactorizeConfig,
    PruneConfig,
    QuantizeConfig,
    TFLiteRunner,
    export_tflite,
    factorize,
    prune,
    qat,
    quantize,
)
from tfcompress.data import lm_dataset
from tfcompress.models import build_gpt
from tfcompress.models.training import train_lm
from tfcompress.quantize import strip_qat

SEQ = 32


@pytest.fixture(scope="module")
def trained():
    """A tiny GPT trained a few steps, so its logits are not flat."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_gpt("test-tiny")
    ids = np.random.default_rng(0).integers(0, 64, 4096).astype(np.int32)
    train_lm(model, lm_dataset(ids, SEQ, 8, repeat=True), steps=30, verbose=0)
    return model, ids[: 8 * SEQ].reshape(8, SEQ)


def _export(model, path, mode, sample):
    result = export_tflite(model, path, mode, SEQ, sample=sample, verbose=False)
    assert result.agreement >= 0.95
    return result


@pytest.mark.parametrize(
    "config",
    [
        PruneConfig(method="sparsegpt", sparsity=0.5),
        PruneConfig(method="wanda", sparsity=0.5, pattern="2:4"),
        PruneConfig(method="magnitude", sparsity=0.5, pattern="neurons"),
    ],
    ids=["sparsegpt-50", "wanda-2of4", "structured-neurons"],
)
def test_pruned_models_export(trained, tmp_path, config):
    model, calib = trained
    pruned = prune(model, config, calib)
    dense = _export(model, tmp_path / "dense.tflite", "float32", calib)
    result = _export(pruned, tmp_path / "pruned.tflite", "float32", calib)
    if config.pattern == "neurons":
        assert result.bytes < dense.bytes
    else:
        assert result.gzip_bytes < dense.gzip_bytes


def test_low_rank_model_exports_smaller(trained, tmp_path):
    model, calib = trained
    small = factorize(model, FactorizeConfig(target_ratio=0.5, include="mlp"), calib,
                      verbose=False)
    dense = _export(model, tmp_path / "dense.tflite", "float32", calib)
    assert _export(small, tmp_path / "lr.tflite", "float32", calib).bytes < dense.bytes


def test_weight_quantized_model_exports(trained, tmp_path):
    model, calib = trained
    q = quantize(model, QuantizeConfig(method="rtn", bits=8), calib)
    _export(q, tmp_path / "q.tflite", "dynamic_int8", calib)


def test_qat_model_exports_like_its_stripped_model(trained, tmp_path):
    model, calib = trained
    fake = qat(model, QuantizeConfig(bits=8))
    result = _export(fake, tmp_path / "qat.tflite", "dynamic_int8", calib)
    stripped = _export(strip_qat(fake), tmp_path / "stripped.tflite", "dynamic_int8", calib)
    assert result.bytes < 0.5 * (model.count_params() * 4)
    # the fake-quant ops fold into constants: both files hold the same on-grid weights (a
    # float32-rounded grid value can land on the other side of a dynamic int8 activation
    # step, so single logits may move by one such step, ~1e-3)
    x = calib[:1, :SEQ]
    got, want = TFLiteRunner(result.path).predict(x), TFLiteRunner(stripped.path).predict(x)
    np.testing.assert_allclose(got, want, atol=3e-3)
    assert (np.abs(got - want) > 1e-4).mean() < 0.01
