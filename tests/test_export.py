"""tfcompress.export: modes, verification, errors, generation, measurement, demo stage."""

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.core.layers import copy_model, kernel_matrix, select_layers, set_kernel_matrix
from tfcompress.data import load_corpus
from tfcompress.errors import TfcompressError, VerificationError
from tfcompress.evaluate import evaluate, lm_quality
from tfcompress.evaluate.latency import keras_forward
from tfcompress.export import (
    MODES,
    InputSpec,
    TFLiteRunner,
    XNNPACKFallbackWarning,
    export_tflite,
    generate,
    generate_text,
    measure_tflite,
    next_token,
    representative_samples,
)
from tfcompress.export.ops import delegated
from tfcompress.export.verification import Tolerances, agreement_stats, verify
from tfcompress.models import build_gpt
from tfcompress.models.training import train_lm

SEQ = 32
pytestmark = pytest.mark.filterwarnings("ignore::tfcompress.export.XNNPACKFallbackWarning")


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("austen")


@pytest.fixture(scope="module")
def lm(corpus):
    """A test-tiny GPT trained a little, so its next-token argmax is not a coin toss."""
    keras.utils.set_random_seed(0)
    model = build_gpt("test-tiny", vocab_size=corpus.vocab_size)
    train_lm(model, corpus.dataset("train", SEQ, 8, repeat=True, seed=0), 40)
    return model


@pytest.fixture(scope="module")
def calibration(corpus):
    return corpus.windows("train", SEQ, 16)[0]


@pytest.fixture(scope="module")
def heldout(corpus):
    x, y, m = corpus.windows("test", SEQ, 8)
    return [(x, y, m)]


# the island modes are int8 / int16x8 on a model without float islands:
# tests/test_gpt_integer.py and tests/test_llama_prefix.py have them
WINDOW_MODES = tuple(m for m in MODES if not MODES[m].float_scopes)


@pytest.fixture(scope="module")
def exported(lm, calibration, heldout, tmp_path_factory):
    """Every mode exported once (each verifies itself with the mode's default tolerances)."""
    out = tmp_path_factory.mktemp("modes")
    results = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", XNNPACKFallbackWarning)
        for mode in WINDOW_MODES:
            results[mode] = export_tflite(
                lm, out / f"{mode}.tflite", mode, seq_len=SEQ, verbose=False, eval_data=heldout,
                calibration=calibration if MODES[mode].needs_representative else None)
    results["warnings"] = [str(w.message) for w in caught
                           if issubclass(w.category, XNNPACKFallbackWarning)]
    return results


def test_every_mode_converts_and_agrees_with_keras(exported, lm, heldout):
    forward = keras_forward(lm)
    x = heldout[0][0][:4]
    expected = forward(x)
    for mode in WINDOW_MODES:
        result = exported[mode]
        got = TFLiteRunner(result.path).predict(x)
        rel = np.abs(got - expected).max() / np.abs(expected).max()
        assert rel <= MODES[mode].max_rel_error, mode
        same = (got.argmax(-1) == expected.argmax(-1)).mean()
        assert same >= MODES[mode].min_agreement, mode
        assert result.perplexity / result.keras_perplexity <= MODES[mode].max_ppl_ratio, mode
    assert exported["float32"].max_abs_error < 1e-4 * np.abs(expected).max()


def test_size_ordering_and_tensor_types(exported):
    size = {m: exported[m].bytes for m in WINDOW_MODES}
    assert size["float32"] > size["float16"] > size["dynamic_int8"]
    assert size["float16"] > size["int8"]
    assert size["float32"] > size["int4"]
    assert "float16" in exported["float16"].tensor_dtypes
    assert exported["int8"].tensor_dtypes.get("int8", 0) > exported["dynamic_int8"].tensor_dtypes[
        "int8"]
    assert "int16" in exported["int16x8"].tensor_dtypes
    mixed = exported["int8_mixed"]
    assert mixed.tensor_dtypes["int8"] > 0 and mixed.tensor_dtypes["float32"] > exported[
        "int8"].tensor_dtypes["float32"]  # residual stream, norms and softmax stay float
    assert exported["int4"].quantizer == "ai-edge-quantizer"


def test_perplexity_check_matches_lm_quality(exported, lm, heldout):
    result = exported["float32"]
    assert result.keras_perplexity == pytest.approx(
        lm_quality(keras_forward(lm), heldout)["perplexity"], rel=1e-6)
    runner = TFLiteRunner(result.path)
    assert result.perplexity == pytest.approx(
        lm_quality(runner.predict, heldout)["perplexity"], rel=1e-6)


def test_ops_recorded_and_fallbacks_warned(exported):
    result = exported["float32"]
    assert result.ops["FULLY_CONNECTED"] == 2 * 6 + 1  # q, k, v, o, mlp in/out per block; head
    assert result.not_delegated["GATHER"] == 1  # the token embedding lookup
    assert result.xnnpack_partitions >= 1
    # an embedding lookup in the reference kernels is no news; full-integer attention
    # matmuls there are (int8_mixed keeps them float, in XNNPACK)
    warned = {w.split(".tflite")[0]: w for w in exported["warnings"]}
    assert set(warned) <= {"int8", "int16x8", "int8_static"} and "int8" in warned
    assert all("BATCH_MATMUL" in w and "GATHER" not in w for w in warned.values())


def test_int8_io_token_model_and_float_model(lm, calibration, tmp_path):
    result = export_tflite(lm, tmp_path / "io.tflite", "int8", seq_len=SEQ, int8_io=True,
                           calibration=calibration, verbose=False)
    assert (result.input_dtype, result.output_dtype) == ("int32", "int8")

    rng = np.random.default_rng(0)
    inputs = keras.Input((4, 6))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    data = rng.standard_normal((32, 4, 6)).astype("float32")
    with pytest.warns(DeprecationWarning, match="representative_data= is deprecated.*use "
                      "calibration="):
        result = export_tflite(model, tmp_path / "f.tflite", "int8", int8_io=True,
                               representative_data=data, sample=data[:8], verbose=False)
    assert (result.input_dtype, result.output_dtype) == ("int8", "int8")
    got = TFLiteRunner(result.path).predict(data[:8])  # the runner (de)quantizes the I/O
    want = model.predict(data[:8], verbose=0)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_greedy_generation_matches_keras(exported, lm):
    runner = TFLiteRunner(exported["float32"].path)
    prompt = [72, 101, 32]
    from_tflite = generate(runner.predict, prompt, 40, SEQ)  # 43 tokens: the window slides
    from_keras = generate(keras_forward(lm), prompt, 40, SEQ)
    assert from_tflite.tolist() == from_keras.tolist()
    tokenizer = load_corpus("austen").tokenizer
    text = generate_text(exported["float32"].path, tokenizer, "He", max_new_tokens=5)
    assert text == tokenizer.decode(generate(runner.predict, tokenizer.encode("He"), 5, SEQ))


def test_next_token_greedy_and_top_k():
    logits = np.array([0.0, 3.0, 1.0, 2.9])
    assert next_token(logits) == 1
    rng = np.random.default_rng(0)
    draws = {next_token(logits, top_k=2, rng=rng) for _ in range(200)}
    assert draws == {1, 3}
    cold = [next_token(logits, top_k=4, temperature=1e-3, rng=rng) for _ in range(20)]
    assert set(cold) == {1}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "int9"}, "mode must be one of"),
        ({"mode": "int8"}, "needs calibration"),
        ({"mode": "int16x8"}, "needs calibration"),
        ({"mode": "int8", "calibration": np.zeros((4, 16), "int32")}, r"shape \(4, 16\)"),
        ({"mode": "int8", "calibration": np.zeros((4, SEQ), "float32")}, "dtype float32"),
        ({"mode": "int8", "calibration": np.zeros((0, SEQ), "int32")}, "is empty"),
        ({"mode": "int8", "calibration": np.full((2, SEQ), 999)}, r"\[999, 999\]"),
        ({"mode": "int8", "calibration": tf.data.Dataset.from_tensor_slices(
            np.zeros((4, 8), "int32"))}, "dataset elements has shape"),
        ({"mode": "int8", "calibration": tf.data.Dataset.from_tensor_slices(
            np.zeros((0, SEQ), "int32"))}, "is empty"),
        ({"mode": "float16", "calibration": np.zeros((2, SEQ), "int32")},
         "only used by modes"),
        ({"mode": "float16", "int8_io": True}, "int8_io is only for mode 'int8'"),
        ({"mode": "int8", "calibration": np.zeros((2, SEQ), "int32"),
          "representative_data": np.zeros((2, SEQ), "int32")},
         r"give calibration only \(representative_data is its deprecated name\), not both"),
        ({"mode": "float32", "batch_size": 0}, "batch_size must be"),
        ({"mode": "float32", "sample": np.zeros((2, 5), "int32")}, "sample must have shape"),
    ],
)
def test_bad_arguments_raise_before_any_work(lm, tmp_path, kwargs, match):
    path = tmp_path / "never.tflite"
    with pytest.raises(TfcompressError, match=match):
        export_tflite(lm, path, seq_len=SEQ, verbose=False, **kwargs)
    assert not path.exists()


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    model = build_gpt("test-tiny", vocab_size=32, seq_len=8)
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    real_write = Path.write_bytes

    def disk_full(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_tflite(model, path, seq_len=8, verify_output=False, verbose=0)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]
    assert path.read_bytes() == b"old"
    export_tflite(model, path, seq_len=8, verify_output=False, verbose=0)
    assert TFLiteRunner(path).seq_len == 8 and [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


def test_not_a_model_raises(tmp_path):
    with pytest.raises(TfcompressError, match="must be a Keras model"):
        export_tflite(object(), tmp_path / "x.tflite", seq_len=SEQ)


def test_float16_overflow_fails_verification_with_figures(lm, tmp_path):
    # Same function in Keras (the scales cancel), but 1e5 does not fit in float16.
    model = copy_model(lm)
    norm, head = model.get_layer("final_norm"), model.get_layer("lm_head")
    norm.set_weights([w * 1e5 for w in norm.get_weights()])
    set_kernel_matrix(head, kernel_matrix(head) * 1e-5)
    figures = r"float16 export disagrees.*max \|error\| (inf|[\d.]+)"
    with pytest.raises(VerificationError, match=figures):
        export_tflite(model, tmp_path / "bad.tflite", "float16", seq_len=SEQ, verbose=False)


def test_tolerance_checks_raise_with_numbers():
    stats = {"max_abs_error": 0.5, "relative_error": 0.05, "agreement": 0.9,
             "perplexity": 12.0, "keras_perplexity": 10.0}
    with pytest.raises(VerificationError, match=r"max \|error\| 0.5 > allowed 0.1"):
        verify(stats, Tolerances.of(MODES["int8"], 0.1, None, None))
    with pytest.raises(VerificationError, match=r"agreement 90.00% < needed 95%"):
        verify(stats, Tolerances.of(MODES["int8"], None, 0.95, None))
    with pytest.raises(VerificationError, match=r"ratio 1.200 > 1.100"):
        verify(stats, Tolerances.of(MODES["int8"], None, None, None))
    verify(stats, Tolerances.of(MODES["int8"], None, None, 1.25))  # within every tolerance


def test_one_verifier_for_window_files_and_bundles_any_figure_fails():
    from tfcompress.export import ExportResult, LLMExportResult

    # next tokens and perplexity fine, logits off by 0.6 of their range: a broken file
    figures = {"max_abs_error": 3.0, "relative_error": 0.6, "agreement": 0.99,
               "perplexity": 10.0, "keras_perplexity": 10.0}
    window = ExportResult("m.tflite", "dynamic_int8", 1, 1, **figures)
    bundle = LLMExportResult("b", "b/model.tflite", "dynamic_int8", 1, **figures)
    for result in (window, bundle):
        with pytest.raises(VerificationError) as err:
            verify(result, Tolerances.of(MODES["dynamic_int8"]))
        assert str(err.value) == ("dynamic_int8 export disagrees with the Keras model: max "
                                  "|error| 3 is 0.6 of the largest logit (allowed 0.5)")
        assert err.value.relax == {"max_abs_error": 3.0}
        verify(result, Tolerances.of(MODES["dynamic_int8"], max_abs_error=3.0))  # relaxed


def test_representative_samples_from_batched_dataset_of_tuples():
    x = np.arange(24).reshape(6, 4) % 10
    data = tf.data.Dataset.from_tensor_slices((x, x, np.ones_like(x))).batch(4)
    spec = InputSpec((1, 4), "int32", vocab_size=10)
    rows = representative_samples(data, spec, max_samples=5)
    assert len(rows) == 5 and all(r.shape == (1, 4) and r.dtype == np.int32 for r in rows)
    np.testing.assert_array_equal(np.concatenate(rows), x[:5])


def test_agreement_stats_by_hand():
    expected = np.array([[[1.0, 2.0, 0.0], [4.0, 0.0, 1.0]]])
    got = np.array([[[1.5, 1.0, 0.0], [4.0, 0.0, 1.0]]])
    stats = agreement_stats(expected, got)
    assert stats == {"max_abs_error": 1.0, "relative_error": 0.25, "agreement": 0.5}


def test_delegated_partitions_by_hand():
    # t0 -> A -> t1 -> B -> t2 -> C -> t3 (graph output); XNNPACK took A and B only.
    nodes = [
        {"op_name": "A", "inputs": [0], "outputs": [1]},
        {"op_name": "B", "inputs": [1], "outputs": [2]},
        {"op_name": "C", "inputs": [2], "outputs": [3]},
        {"op_name": "DELEGATE", "inputs": [0], "outputs": [2]},
    ]
    assert delegated(nodes, {3}) == [True, True, False]
    nodes[-1] = {"op_name": "DELEGATE", "inputs": [1], "outputs": [3]}  # B and C this time
    assert delegated(nodes, {3}) == [False, True, True]


def test_measure_and_evaluate_use_the_file(exported, heldout):
    path = exported["dynamic_int8"].path
    measured = measure_tflite(path, threads=(1, 2), repeats=2)
    assert set(measured["latency_ms_by_threads"]) == {"1", "2"}
    assert measured["bytes"] == Path(path).stat().st_size
    assert 0 < measured["peak_memory"]["interpreter_mb"] < measured["peak_memory"]["peak_mb"]
    report = evaluate(path, heldout, batch_sizes=(1,), repeats=2)
    assert report.extra["ops"] == exported["dynamic_int8"].ops
    assert report.quality["perplexity"] == pytest.approx(exported["dynamic_int8"].perplexity)


# --- every kind of compressed model through the same verb (built here with plain Keras) ---


def _kernel_layers(model):
    return select_layers(model, types=("Dense", "EinsumDense"))


def _mask_smallest(model, fraction: float):
    for _, layer in _kernel_layers(model):
        w = kernel_matrix(layer)
        set_kernel_matrix(layer, np.where(np.abs(w) < np.quantile(np.abs(w), fraction), 0, w))
    return model


def _mask_n_of_m(model, n: int = 2, m: int = 4):
    for _, layer in _kernel_layers(model):
        w = kernel_matrix(layer)
        groups = w.reshape(-1, m, w.shape[1])
        rank = np.argsort(np.argsort(-np.abs(groups), axis=1), axis=1)
        set_kernel_matrix(layer, np.where(rank < n, groups, 0).reshape(w.shape))
    return model


def _round_to_int8_grid(model):
    for _, layer in _kernel_layers(model):
        w = kernel_matrix(layer)
        scale = np.abs(w).max(axis=0, keepdims=True) / 127
        set_kernel_matrix(layer, np.round(w / scale) * scale)
    return model


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class FakeQuant(keras.layers.Layer):
    """What quantization-aware training leaves in a graph: a fixed-range fake-quant op."""

    def __init__(self, limit: float = 8.0, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_args(x, -self.limit, self.limit)

    def get_config(self):
        return {**super().get_config(), "limit": self.limit}


def test_sparse_model_exports_smaller_gzip(lm, exported, tmp_path):
    sparse = _mask_smallest(copy_model(lm), 0.7)
    result = export_tflite(sparse, tmp_path / "sparse.tflite", seq_len=SEQ, verbose=False)
    assert result.agreement >= MODES["float32"].min_agreement
    assert result.gzip_bytes < 0.8 * exported["float32"].gzip_bytes


def test_n_of_m_model_exports_with_its_pattern_intact(lm, tmp_path):
    model = _mask_n_of_m(copy_model(lm))
    assert np.mean(kernel_matrix(model.get_layer("lm_head")) == 0) == 0.5
    result = export_tflite(model, tmp_path / "nm.tflite", seq_len=SEQ, verbose=False)
    assert result.agreement >= MODES["float32"].min_agreement
    interpreter = TFLiteRunner(result.path).interpreter
    head = [d for d in interpreter.get_tensor_details()
            if tuple(d["shape"]) == (lm.output_shape[-1], 32)]  # FULLY_CONNECTED: (out, in)
    weights = interpreter.get_tensor(head[0]["index"])
    assert ((weights.reshape(-1, 4) == 0).sum(axis=1) >= 2).all()


def test_structured_smaller_model_exports_smaller_file(lm, corpus, exported, tmp_path):
    small = build_gpt("test-tiny", vocab_size=corpus.vocab_size, d_ff=64)
    for layer in small.layers:
        weights = lm.get_layer(layer.name).get_weights()
        if layer.name.endswith("mlp_in"):  # keep the 64 hidden units with the largest norm
            keep = np.sort(np.argsort(-np.linalg.norm(weights[0], axis=0))[:64])
            weights = [weights[0][:, keep], weights[1][keep]]
        elif layer.name.endswith("mlp_out"):
            keep = np.sort(np.argsort(-np.linalg.norm(lm.get_layer(
                layer.name.replace("out", "in")).get_weights()[0], axis=0))[:64])
            weights = [weights[0][keep], weights[1]]
        layer.set_weights(weights)
    result = export_tflite(small, tmp_path / "small.tflite", "float16", seq_len=SEQ,
                           verbose=False, min_agreement=0.9)
    assert result.bytes < exported["float16"].bytes


def test_low_rank_two_stacked_dense_exports_dynamic_int8(lm, tmp_path):
    u, s, vt = np.linalg.svd(kernel_matrix(lm.get_layer("lm_head")), full_matrices=False)
    rank = 16
    first = keras.layers.Dense(rank, use_bias=False, name="lm_head_u")
    second = keras.layers.Dense(vt.shape[1], name="lm_head_v")
    logits = second(first(lm.get_layer("final_norm").output))
    model = keras.Model(lm.inputs, logits)
    first.set_weights([u[:, :rank] * s[:rank]])
    second.set_weights([vt[:rank], lm.get_layer("lm_head").get_weights()[1]])
    result = export_tflite(model, tmp_path / "lowrank.tflite", "dynamic_int8", seq_len=SEQ,
                           verbose=False, min_agreement=0.8)
    assert result.ops["FULLY_CONNECTED"] == 2 * 6 + 2


def test_int4_refuses_widths_off_its_block_before_converting(tmp_path):
    ids = keras.Input((SEQ,), dtype="int32")
    hidden = keras.layers.Dense(48, name="narrow")(keras.layers.Embedding(50, 64)(ids))
    model = keras.Model(ids, keras.layers.Dense(50, name="head")(hidden))
    with pytest.raises(TfcompressError, match=r"multiple of 32 .*\{'head': \[48\]\}"):
        export_tflite(model, tmp_path / "m.tflite", "int4", seq_len=SEQ, verbose=False)
    assert not (tmp_path / "m.tflite").exists()


def test_ptq_rounded_weights_export_int8(lm, calibration, tmp_path):
    model = _round_to_int8_grid(copy_model(lm))
    result = export_tflite(model, tmp_path / "ptq.tflite", "int8", seq_len=SEQ,
                           calibration=calibration, verbose=False)
    assert result.agreement >= MODES["int8"].min_agreement and not result.qat


def test_qat_fake_quant_model_takes_the_real_int8_path(lm, tmp_path):
    hidden = FakeQuant(8.0)(lm.get_layer("final_norm").output)
    model = keras.Model(lm.inputs, FakeQuant(16.0)(lm.get_layer("lm_head")(hidden)))
    result = export_tflite(model, tmp_path / "qat.tflite", "int8", seq_len=SEQ, verbose=False)
    assert result.qat  # no representative data needed: ranges come from the fake-quant ops
    assert result.tensor_dtypes["int8"] > 0
    assert result.agreement >= MODES["int8"].min_agreement


def test_tf_keras_model_exports(tmp_path):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((SEQ,), dtype="int32"),
                                 tf_keras.layers.Embedding(64, 8), tf_keras.layers.Dense(64)])
    result = export_tflite(model, tmp_path / "tfk.tflite", "float32", verbose=False)
    assert result.agreement == 1.0 and result.relative_error < 1e-5


def test_keras_native_quantized_model_gets_a_clear_error(lm, tmp_path):
    model = copy_model(lm)
    model.quantize("int8")
    with pytest.raises(TfcompressError, match="Keras-native quantized layers"):
        export_tflite(model, tmp_path / "kq.tflite", seq_len=SEQ, verbose=False)
