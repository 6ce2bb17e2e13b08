"""First-cut TFLite export: float32/float16 files agree with Keras; disagreement raises."""

import numpy as np
import pytest

from tfcompress.errors import TfcompressError, VerificationError
from tfcompress.evaluate import evaluate
from tfcompress.export import TFLiteRunner, export_tflite
from tfcompress.models import build_gpt


@pytest.fixture(scope="module")
def model():
    return build_gpt("test-tiny", tie_embeddings=True)


def test_float32_export_agrees_with_keras(model, tmp_path):
    result = export_tflite(model, tmp_path / "m.tflite", seq_len=32)
    assert result.max_abs_error < 1e-4 and result.agreement == 1.0
    x = np.random.default_rng(3).integers(0, 256, (5, 32))
    np.testing.assert_allclose(TFLiteRunner(result.path).predict(x), model(x), atol=1e-4)
    assert result.bytes == (tmp_path / "m.tflite").stat().st_size


def test_float16_is_smaller(model, tmp_path):
    f32 = export_tflite(model, tmp_path / "a.tflite", seq_len=32)
    f16 = export_tflite(model, tmp_path / "b.tflite", mode="float16", seq_len=32)
    assert f16.bytes < 0.7 * f32.bytes


def test_evaluate_reads_the_tflite_file(model, tmp_path):
    path = export_tflite(model, tmp_path / "m.tflite", seq_len=32).path
    x = np.random.default_rng(4).integers(0, 256, (2, 32))
    keras_report = evaluate(model, (x, x), seq_len=32, batch_sizes=())
    tfl_report = evaluate(path, (x, x), batch_sizes=(1,), repeats=2)
    assert tfl_report.kind == "tflite"
    assert tfl_report.quality["perplexity"] == pytest.approx(
        keras_report.quality["perplexity"], rel=1e-4
    )


def test_a_disagreeing_export_raises_with_figures(model, tmp_path):
    with pytest.raises(VerificationError, match=r"max \|error\| .* next-token agreement"):
        export_tflite(model, tmp_path / "m.tflite", mode="float16", seq_len=32,
                      max_abs_error=1e-12)


def test_bad_arguments_raise_before_work(model, tmp_path):
    with pytest.raises(TfcompressError, match="mode must be one of"):
        export_tflite(model, tmp_path / "m.tflite", mode="int3")
    with pytest.raises(TfcompressError, match="seq_len is needed"):
        export_tflite(model, tmp_path / "m.tflite")
    with pytest.raises(TfcompressError, match="must be a Keras model"):
        export_tflite("not a model", tmp_path / "m.tflite", seq_len=8)
    assert not (tmp_path / "m.tflite").exists()
