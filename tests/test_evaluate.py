"""Measurement: quality math, real file sizes, reports, tables and plots."""

import gzip
import math

import keras
import numpy as np
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.evaluate import (
    Report,
    compare,
    evaluate,
    file_sizes,
    keras_file_sizes,
    lm_quality,
    param_counts,
    plot_quality_vs_size,
    ratios,
    time_callable,
    token_stats,
)
from tfcompress.evaluate.report import write_report
from tfcompress.models import build_gpt
from tfcompress.models.training import compile_lm


def uniform_lm(vocab: int):
    """A model whose logits are all zero: every next token has probability 1/vocab."""
    ids = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(vocab, 4)(ids)
    logits = keras.layers.Dense(vocab, kernel_initializer="zeros")(h)
    return keras.Model(ids, logits)


def test_token_stats_against_hand_values():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    targets = np.array([[0, 2]])
    nll, hits, count = token_stats(logits, targets)
    assert nll == pytest.approx(-math.log(0.5) - math.log(0.1))
    assert hits == 1 and count == 2


def test_masked_positions_count_for_nothing():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7))
    targets = rng.integers(0, 7, (2, 5))
    mask = np.ones((2, 5))
    mask[1, 3:] = 0
    garbage = logits.copy()
    garbage[1, 3:] = 1e3 * rng.normal(size=(2, 7))
    assert token_stats(logits, targets, mask) == pytest.approx(token_stats(garbage, targets, mask))
    assert token_stats(logits, targets, mask)[2] == 8


def test_uniform_model_perplexity_equals_vocabulary_size():
    model = uniform_lm(50)
    x = np.random.default_rng(1).integers(0, 50, (3, 16))
    report = evaluate(model, (x, x), seq_len=16, batch_sizes=())
    assert report.quality["perplexity"] == pytest.approx(50.0, rel=1e-6)
    assert lm_quality(lambda a: np.zeros((*a.shape, 50)), [(x, x)])["nll"] == pytest.approx(
        math.log(50)
    )


def test_file_sizes_come_from_real_files(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\x00" * 10_000)
    sizes = file_sizes(path)
    assert sizes["bytes"] == 10_000
    assert sizes["gzip_bytes"] == len(gzip.compress(b"\x00" * 10_000, compresslevel=9, mtime=0))
    assert sizes["gzip_bytes"] < 200


def test_keras_sizes_and_sparsity_pay_off_in_gzip(tmp_path):
    model = build_gpt("test-tiny")
    dense = keras_file_sizes(model, tmp_path / "dense.keras")
    assert dense["bytes"] == (tmp_path / "dense.keras").stat().st_size
    for w in model.weights:
        w.assign(np.zeros(w.shape))
    zeros = keras_file_sizes(model)
    assert param_counts(model)["nonzero"] == 0
    assert zeros["gzip_bytes"] < 0.2 * dense["gzip_bytes"]
    compile_lm(model)
    model.fit(np.zeros((2, 32)), np.zeros((2, 32)), verbose=0)
    trained = keras_file_sizes(model)  # AdamW state is not model size
    assert trained["bytes"] < 1.05 * dense["bytes"]
    assert model.optimizer is not None


def test_evaluate_reports_every_measurement():
    model = build_gpt("test-tiny")
    x = np.random.default_rng(2).integers(0, 256, (4, 32))
    report = evaluate(model, (x, x), seq_len=32, batch_sizes=(1, 2), repeats=2)
    assert report.params == model.count_params()
    # zero-initialised biases and LayerNorm betas are the only zeros of a fresh model
    assert report.nonzero == sum(np.count_nonzero(w.numpy()) for w in model.weights)
    assert report.params - report.nonzero == sum(
        np.prod(w.shape) for w in model.weights if w.path.endswith(("bias", "beta"))
    )
    assert report.bits_per_weight == pytest.approx(8 * report.bytes / report.params)
    assert set(report.latency) == {"1", "2"}
    assert report.latency["1"]["median_ms"] > 0
    assert 0 <= report.quality["accuracy"] <= 1
    assert report.quality["tokens"] == 4 * 32


def test_evaluate_rejects_bad_input(tmp_path):
    with pytest.raises(TfcompressError, match="must be a Keras model or a path to a .tflite"):
        evaluate(object())
    with pytest.raises(TfcompressError, match="must end in .tflite"):
        evaluate(str(tmp_path / "model.keras"))
    with pytest.raises(TfcompressError, match="does not exist"):
        evaluate(str(tmp_path / "model.tflite"))
    with pytest.raises(TfcompressError, match="task must be one of"):
        evaluate(build_gpt("test-tiny"), task="translation")


def test_compare_ratios_and_table():
    base = Report("big", "keras", bytes=1000, gzip_bytes=800,
                  latency={"1": {"median_ms": 10.0}}, quality={"perplexity": 4.0, "accuracy": 0.5})
    small = Report("small", "keras", bytes=250, gzip_bytes=100,
                   latency={"1": {"median_ms": 4.0}}, quality={"perplexity": 5.0, "accuracy": 0.4})
    r = ratios(small, base)
    assert r["size_ratio"] == 0.25 and r["gzip_size_ratio"] == 0.125
    assert r["speedup"] == 2.5 and r["perplexity_ratio"] == 1.25
    assert r["accuracy_drop"] == pytest.approx(0.1)
    table = compare([base, small], baseline="big")
    assert "| small | keras |" in table and "| 0.250 |" in table and "| 1.250 |" in table
    with pytest.raises(TfcompressError, match="baseline must be one of"):
        compare([base, small], baseline="medium")


def test_plot_and_report_files(tmp_path):
    reports = [Report("a", "keras", bytes=10, gzip_bytes=2_000_000, quality={"perplexity": 3.0}),
               Report("b", "keras", bytes=5, gzip_bytes=1_000_000, quality={"perplexity": 3.5})]
    fig = plot_quality_vs_size(reports, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [t.get_text() for t in fig.axes[0].texts] == ["a", "b"]
    md = write_report(reports, tmp_path / "run", notes="hello")
    text = md.read_text()
    assert "quality_vs_size.png" in text and "hello" in text
    assert (tmp_path / "run" / "report.json").is_file()


def test_time_callable_statistics():
    calls = []
    stats = time_callable(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7
    assert stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_callable(lambda: None, repeats=0)


def test_classifier_accuracy_from_evaluate():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    y = np.array([0, 1, 1, 0])
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False)(inputs))
    model.layers[-1].kernel.assign(np.array([[0.0, 0.0], [0.0, 1.0]]))  # class 1 iff x[1] > 0
    report = evaluate(model, (x, y), task="classifier", batch_sizes=())
    assert report.quality == {"accuracy": 1.0}
    model.layers[-1].kernel.assign(np.array([[0.0, 1.0], [0.0, 0.0]]))  # class 1 iff x[0] > 0
    assert evaluate(model, (x, y), task="classifier", batch_sizes=()).quality["accuracy"] == 0.5


def test_interleaved_latency_alternates_and_reports_each_callables_median():
    import time

    from tfcompress.evaluate import interleaved_latency

    calls = []

    def sleeper(name, seconds):
        def run():
            calls.append(name)
            time.sleep(seconds)
        return run

    out = interleaved_latency({"slow": sleeper("slow", 0.02), "fast": sleeper("fast", 0.0)},
                              rounds=3, repeats=2, warmup=1)
    # warm-up once each, then per round `repeats` calls of one before the other
    assert calls == ["slow", "fast"] + ["slow", "slow", "fast", "fast"] * 3
    assert out["slow"]["median_ms"] >= 20 > out["fast"]["median_ms"]
    assert out["slow"]["rounds"] == 3
    with pytest.raises(TfcompressError, match="fns is empty"):
        interleaved_latency({})


def test_label_offsets_keep_labels_apart_and_inside_the_frame():
    from tfcompress.evaluate.plots import label_offsets

    offsets = ((1, 1), (1, -1), (-1, 1))
    # two labels on one point: the second moves below; a label at the right edge flips left
    got = label_offsets([(50, 50), (50, 50), (98, 10)], [(20, 5)] * 3, (0, 0, 100, 100),
                        offsets)
    assert got == [(1, 1), (1, -1), (-1, 1)]
    # nowhere free: the least overlap wins (60 of 100 square units over the first label)
    assert label_offsets([(0, 0), (0, 0)], [(10, 10)] * 2, (0, 0, 100, 100),
                         ((0, 0), (4, 0), (-4, 0)))[1] == (4, 0)
    # markers count as obstacles
    assert label_offsets([(50, 50), (60, 52)], [(5, 5)] * 2, (0, 0, 100, 100),
                         ((1, 1), (1, -1)), marker=4) == [(1, 1), (1, 1)]


def test_plot_returns_a_figure_and_leaves_the_backend_alone():
    import matplotlib
    from matplotlib.figure import Figure

    backend = matplotlib.get_backend()
    reports = [Report(f"student-pruned-{i}", "tflite", gzip_bytes=1_000_000,
                      quality={"perplexity": 3.0}) for i in range(4)]
    reports.append(Report("teacher", "keras", gzip_bytes=4_000_000, quality={"perplexity": 2.0}))
    fig = plot_quality_vs_size(reports)
    assert isinstance(fig, Figure) and len(fig.axes[0].texts) == 5
    offsets = {t.xyann for t in fig.axes[0].texts[:4]}
    assert len(offsets) == 4  # four labels on one spot: each placed elsewhere
    assert matplotlib.get_backend() == backend
