"""Distiller, callbacks, plain-fit path and teacher cache on tiny models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.distill import (
    BestStudentCheckpoint,
    Distiller,
    ParameterSchedule,
    SoftTargetLoss,
    cache_teacher,
    load_teacher_cache,
    with_teacher_logits,
)
from tfcompress.distill.callbacks import student_perplexity
from tfcompress.errors import TfcompressError
from tfcompress.models import build_gpt

VOCAB, SEQ, BATCH = 64, 16, 4


def tiny(name, d_model=32, n_layers=2, vocab=VOCAB, seed=0):
    keras.utils.set_random_seed(seed)
    return build_gpt("test-tiny", vocab_size=vocab, seq_len=SEQ, d_model=d_model,
                     n_layers=n_layers, n_heads=2, name=name)


@pytest.fixture(scope="module")
def teacher():
    return tiny("teacher", seed=1)


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (12, SEQ)).astype(np.int32)
    y = np.roll(x, -1, axis=1)
    mask = np.ones((12, SEQ), np.float32)
    mask[-1, SEQ // 2:] = 0.0
    return x, y, mask


def dataset(arrays, repeat=False):
    ds = tf.data.Dataset.from_tensor_slices(arrays).batch(BATCH)
    return ds.repeat() if repeat else ds


def compiled(distiller):
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2),
                      weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")])
    return distiller


def test_fit_history_teacher_frozen_and_plain_student_export(teacher, arrays, tmp_path):
    before = [w.copy() for w in teacher.get_weights()]
    student = tiny("student", d_model=16, n_layers=1)
    distiller = compiled(Distiller(teacher, student, alpha=0.3, temperature=2.0))
    history = distiller.fit(dataset(arrays, repeat=True), steps_per_epoch=3, verbose=0,
                            validation_data=dataset(arrays)).history
    assert {"loss", "hard_loss", "soft_loss", "acc", "val_loss", "val_soft_loss"} <= set(history)
    np.testing.assert_allclose(history["loss"][0],
                               0.3 * history["hard_loss"][0] + 0.7 * history["soft_loss"][0],
                               rtol=1e-5)
    for a, b in zip(before, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert distiller.student is student
    path = tmp_path / "student.keras"
    student.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(loaded.get_weights(), student.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.predict(arrays[0], verbose=0),
                               student.predict(arrays[0], verbose=0), atol=1e-5)


def numpy_kd(y, s_logits, t_logits, mask, alpha, temperature, divergence, beta):
    """Masked-mean KD loss in plain NumPy (float64), independent of tfcompress.distill."""
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    hard = -np.take_along_axis(log_softmax(s_logits), y[..., None], -1)[..., 0]
    log_p, log_q = log_softmax(t_logits / temperature), log_softmax(s_logits / temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    if divergence == "forward_kl":
        soft = (p * (log_p - log_q)).sum(-1)
    else:
        m = beta * p + (1 - beta) * q
        kl_pm, kl_qm = (p * (log_p - np.log(m))).sum(-1), (q * (log_q - np.log(m))).sum(-1)
        soft = beta * kl_pm + (1 - beta) * kl_qm
    hard = (hard * mask).sum() / mask.sum()
    soft = temperature**2 * (soft * mask).sum() / mask.sum()
    return alpha * hard + (1 - alpha) * soft, hard, soft


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_evaluate_equals_hand_computed_loss(teacher, arrays, divergence):
    x, y, mask = arrays
    student = tiny("student", d_model=16, n_layers=1)
    distiller = compiled(Distiller(teacher, student, alpha=0.4, temperature=3.0,
                                   divergence=divergence, beta=0.2))
    got = distiller.evaluate(x, y, sample_weight=mask, batch_size=12, verbose=0,
                             return_dict=True)
    expected = numpy_kd(y, student.predict(x, verbose=0).astype(np.float64),
                        teacher.predict(x, verbose=0).astype(np.float64), mask, 0.4, 3.0,
                        divergence, 0.2)
    np.testing.assert_allclose([got["loss"], got["hard_loss"], got["soft_loss"]], expected,
                               rtol=1e-4)


def test_projections_map_widths_and_stay_out_of_the_student(teacher, arrays):
    student = tiny("student", d_model=16, n_layers=1)
    distiller = compiled(Distiller(teacher, student, features=True, feature_weight=0.5))
    assert distiller.feature_pairs == [("block0_add2", "block1_add2")]
    assert distiller.projections[0].kernel.shape == (16, 32)
    n_student = student.count_params()
    before = distiller.projections[0].kernel.numpy().copy()
    history = distiller.fit(dataset(arrays, repeat=True), steps_per_epoch=2, verbose=0).history
    assert history["feature_loss"][0] > 0
    assert not np.allclose(distiller.projections[0].kernel.numpy(), before)  # trained
    assert student.count_params() == n_student
    assert all("projection" not in la.name for la in student.layers)
    same_width = Distiller(teacher, tiny("student2", d_model=32, n_layers=1), features=True)
    assert same_width.projections[0].trainable_weights == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"labels_weight": 1.2}, r"labels_weight must be a number in \[0, 1\]"),
    ({"labels_weight": (0.3,)}, r"labels_weight must be a number in \[0, 1\] or a pair "
                                r"\(start, end\) of them, got \(0.3,\)"),
    ({"labels_weight": (0.3, 1.5)}, r"labels_weight's end must be a number in \[0, 1\]"),
    ({"temperature": 0}, "temperature must be a number > 0"),
    ({"divergence": "kl"}, "divergence must be one of"),
    ({"features": [("nope", "block0_add2")]}, r"student has no layers named \['nope'\]"),
])
def test_bad_arguments_raise(teacher, kwargs, message):
    with pytest.raises(TfcompressError, match=message):
        Distiller(teacher, tiny("student", d_model=16, n_layers=1), **kwargs)


def test_mismatched_vocabularies_and_non_keras_teacher_raise(teacher):
    with pytest.raises(TfcompressError, match="vocabularies must match: teacher has 64 logits, "
                                              "student 32"):
        Distiller(teacher, tiny("student", vocab=32))
    with pytest.raises(TfcompressError, match="teacher must be a Keras 3 keras.Model"):
        Distiller(lambda x: x, tiny("student"))


def test_schedules_set_values_and_round_trip(teacher, arrays):
    schedule = ParameterSchedule("temperature", "linear", start=4.0, end=1.0, steps=4)
    assert [schedule.value(i) for i in range(5)] == pytest.approx([4.0, 3.0, 2.0, 1.0, 1.0])
    cosine = ParameterSchedule("alpha", "cosine", start=0.0, end=1.0)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cosine))
    assert isinstance(clone, ParameterSchedule) and clone.get_config() == cosine.get_config()
    distiller = compiled(Distiller(teacher, tiny("student", d_model=16, n_layers=1)))
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(float(distiller.alpha.numpy())))
    distiller.fit(dataset(arrays, repeat=True), steps_per_epoch=3, verbose=0,
                  callbacks=[cosine, probe])
    assert seen == pytest.approx([0.0, 0.5, 1.0])
    with pytest.raises(TfcompressError, match="parameter must be one of"):
        ParameterSchedule("beta")
    with pytest.raises(TfcompressError, match="temperature must be a number > 0"):
        ParameterSchedule("temperature", start=0.0)


def weights_seen(distiller, data, **fit_kwargs) -> list[float]:
    """The labels weight at the end of every training batch of ``distiller.fit``."""
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(float(distiller.labels_weight.numpy())))
    fit_kwargs["callbacks"] = [*fit_kwargs.get("callbacks", []), probe]
    distiller.fit(data, verbose=0, **fit_kwargs)
    return seen


def test_a_labels_weight_pair_is_annealed_over_each_fit(teacher, arrays):
    distiller = compiled(Distiller(teacher, tiny("student", d_model=16, n_layers=1),
                                   labels_weight=(0.3, 1.0)))
    # linear over the fit's 2 x 2 steps: 0.3 + 0.7 * step / 3
    seen = weights_seen(distiller, dataset(arrays, repeat=True), steps_per_epoch=2, epochs=2)
    assert seen == pytest.approx([0.3, 0.3 + 0.7 / 3, 0.3 + 1.4 / 3, 1.0])
    # the next fit anneals again; a dataset of known size sets the steps (3 batches of 12)
    assert weights_seen(distiller, dataset(arrays)) == pytest.approx([0.3, 0.65, 1.0])
    config = distiller.get_config()
    assert config["labels_weight"] == [0.3, 1.0]
    assert Distiller.from_config(config).labels_weight_schedule == (0.3, 1.0)
    # a schedule the user passes wins over the Distiller's own
    own = ParameterSchedule("labels_weight", "constant", start=0.6, end=0.6)
    assert weights_seen(distiller, dataset(arrays), callbacks=[own]) == pytest.approx([0.6] * 3)
    fixed = Distiller(teacher, tiny("student", d_model=16, n_layers=1), labels_weight=0.4)
    assert fixed.labels_weight_schedule is None
    assert fixed.get_config()["labels_weight"] == pytest.approx(0.4)


def test_an_interrupted_fit_resumes_the_schedule_where_it_stopped(teacher, arrays, tmp_path):
    def fresh():
        return compiled(Distiller(teacher, tiny("student", d_model=16, n_layers=1),
                                  labels_weight=(0.0, 1.0)))

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        fresh().fit(dataset(arrays), epochs=2, verbose=0, callbacks=[backup, Crash()])
    # restarted at epoch 1 of 2 x 3 steps: the weight goes on from step 3 of 0, 0.2 ... 1
    seen = weights_seen(fresh(), dataset(arrays), epochs=2,
                        callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert seen == pytest.approx([0.6, 0.8, 1.0])


def test_a_fit_of_unknown_length_anneals_by_epochs(teacher, arrays):
    distiller = compiled(Distiller(teacher, tiny("student", d_model=16, n_layers=1),
                                   labels_weight=(0.0, 1.0)))
    unknown = dataset(arrays).filter(lambda x, y, m: True)  # cardinality unknown to Keras
    with pytest.warns(UserWarning, match="number of steps is unknown .* labels_weight follows "
                                         "its schedule by epochs"):
        seen = weights_seen(distiller, unknown, epochs=2)
    assert seen == pytest.approx([0.0] * 3 + [1.0] * 3)


def test_cache_with_full_vocab_reproduces_online_loss(teacher, arrays, tmp_path):
    student = tiny("student", d_model=16, n_layers=1)
    online = compiled(Distiller(teacher, student, divergence="reverse_kl"))
    expected = online.evaluate(dataset(arrays), verbose=0, return_dict=True)
    path = cache_teacher(teacher, dataset(arrays), tmp_path / "cache", top_k=VOCAB,
                         verbose=False)
    cached = compiled(Distiller(None, student, divergence="reverse_kl"))
    got = cached.evaluate(load_teacher_cache(path, BATCH), verbose=0, return_dict=True)
    for key in ("loss", "hard_loss", "soft_loss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5)
    top = cache_teacher(teacher, dataset(arrays), tmp_path / "top", top_k=8, verbose=False)
    with pytest.raises(TfcompressError, match="reverse_kl needs the full teacher distribution"):
        cached.evaluate(load_teacher_cache(top, BATCH), verbose=0)
    with pytest.raises(TfcompressError, match=r"top_k must be an integer in \[1, 64\]"):
        cache_teacher(teacher, dataset(arrays), tmp_path / "bad", top_k=65)
    with pytest.raises(TfcompressError, match="dataset is infinite"):
        cache_teacher(teacher, dataset(arrays, repeat=True), tmp_path / "inf")


def test_plain_student_fit_with_soft_target_loss_matches_distiller(teacher, arrays, tmp_path):
    x, y, _ = arrays
    ones = (x, y, np.ones_like(y, np.float32))  # Keras's loss reduction divides by all tokens
    student = tiny("student", d_model=16, n_layers=1)
    reference = compiled(Distiller(teacher, student, alpha=0.3, temperature=2.0))
    expected = reference.evaluate(dataset(ones), verbose=0, return_dict=True)["loss"]
    student.compile(loss=SoftTargetLoss(alpha=0.3, temperature=2.0))
    assert student.evaluate(with_teacher_logits(dataset(ones), teacher), verbose=0) == \
        pytest.approx(expected, rel=1e-5)
    path = cache_teacher(teacher, dataset(ones), tmp_path / "cache", top_k=VOCAB, verbose=False)
    student.compile(loss=SoftTargetLoss(alpha=0.3, temperature=2.0, top_k=VOCAB))
    assert student.evaluate(load_teacher_cache(path, BATCH, packed=True), verbose=0) == \
        pytest.approx(expected, rel=1e-5)
    kd = SoftTargetLoss(alpha=0.3)
    student.compile(optimizer="adam", loss=kd)
    student.fit(with_teacher_logits(dataset(ones, repeat=True), teacher), steps_per_epoch=2,
                verbose=0, callbacks=[ParameterSchedule("temperature", "linear", 3.0, 1.0)])
    assert float(kd.temperature.numpy()) == pytest.approx(1.0)


def test_best_student_checkpoint_keeps_and_restores_the_best(teacher, arrays, tmp_path):
    held_out = [arrays]
    student = tiny("student", d_model=16, n_layers=1)
    distiller = Distiller(teacher, student)
    distiller.compile(optimizer=keras.optimizers.SGD(5.0))  # large steps: perplexity jumps
    best = BestStudentCheckpoint(held_out, path=tmp_path / "best.keras", every=1)
    distiller.fit(dataset(arrays, repeat=True), steps_per_epoch=4, verbose=0, callbacks=[best])
    assert len(best.history) == 4
    assert best.best_perplexity == pytest.approx(min(best.history))
    assert student_perplexity(student, held_out) == pytest.approx(best.best_perplexity, rel=1e-5)
    saved = keras.models.load_model(tmp_path / "best.keras")
    assert student_perplexity(saved, held_out) == pytest.approx(best.best_perplexity, rel=1e-5)
    with pytest.raises(TfcompressError, match="path must end in .keras"):
        BestStudentCheckpoint(held_out, path=tmp_path / "best.h5")


def test_mixed_precision_fit_gives_finite_losses(arrays):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        teacher, student = tiny("teacher"), tiny("student", d_model=16, n_layers=1)
        distiller = compiled(Distiller(teacher, student))
        history = distiller.fit(dataset(arrays, repeat=True), steps_per_epoch=2,
                                verbose=0).history
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert student.layers[-1].compute_dtype == "float16"
    assert all(np.isfinite(history[k][-1]) for k in ("loss", "hard_loss", "soft_loss"))


def test_tf_keras_quantization_aware_student(teacher, arrays):
    tf_keras = pytest.importorskip("tf_keras")
    tfmot = pytest.importorskip("tensorflow_model_optimization")
    annotate = tfmot.quantization.keras.quantize_annotate_layer
    ids = tf_keras.Input((SEQ,), dtype="int32")
    h = tf_keras.layers.Embedding(VOCAB, 16)(ids)
    h = annotate(tf_keras.layers.Dense(32, activation="relu"))(h)
    logits = annotate(tf_keras.layers.Dense(VOCAB))(h)
    student = tfmot.quantization.keras.quantize_apply(tf_keras.Model(ids, logits))
    assert any("quant" in la.name for la in student.layers)
    with pytest.raises(TfcompressError, match="SoftTargetLoss with student.fit"):
        Distiller(teacher, student)
    x, y, mask = arrays
    student.compile(optimizer=tf_keras.optimizers.Adam(1e-2),
                    loss=SoftTargetLoss(alpha=0.0, temperature=1.0))
    data = with_teacher_logits(dataset(arrays, repeat=True), teacher)
    losses = student.fit(data, steps_per_epoch=6, epochs=2, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
