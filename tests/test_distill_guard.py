"""KDGuard and the labels_weight defaults on tiny models: the fall-back to labels with a
useless teacher, none with a good one, the logged losses, bad arguments, ``alpha=``."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.core.losses import lm_loss
from tfcompress.distill import Distiller, KDGuard, ParameterSchedule
from tfcompress.distill.guard import holdout_loss, teacher_helps
from tfcompress.distill.losses import (
    DEFAULT_DIVERGENCE,
    DEFAULT_LABELS_WEIGHT,
    DEFAULT_TEMPERATURE,
    check_labels_weight,
    labels_weight_text,
)
from tfcompress.errors import TfcompressError
from tfcompress.models import build_gpt

VOCAB, SEQ, BATCH, STEPS = 16, 8, 8, 24


def tiny(name, seed):
    keras.utils.set_random_seed(seed)
    return build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, d_model=16, n_layers=1,
                     n_heads=2, name=name)


def counting(n, seed):
    """Windows of a noisy count: each token the previous plus 1 (70 %) or plus 3 (30 %)."""
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random((n, SEQ)) < 0.7, 1, 3)
    ids = np.cumsum(np.concatenate([rng.integers(0, VOCAB, (n, 1)), steps], 1), 1) % VOCAB
    return ids[:, :-1].astype("int32"), ids[:, 1:].astype("int32"), np.ones((n, SEQ), "float32")


def stream(n, seed):
    return tf.data.Dataset.from_tensor_slices(counting(n, seed)).batch(BATCH).repeat()


@pytest.fixture(scope="module")
def data():
    return stream(64, 0), [counting(32, 1)]


@pytest.fixture(scope="module")
def good_teacher():
    """The student's architecture trained on more of the same text: its logits carry the
    70/30 split that a student's few labels only sample."""
    teacher = tiny("teacher", 5)
    teacher.compile(optimizer=keras.optimizers.Adam(1e-2), loss=lm_loss())
    teacher.fit(stream(512, 3), steps_per_epoch=120, verbose=0)
    return teacher


def guarded_fit(teacher, data, labels_weight=0.2):
    train, holdout = data
    distiller = Distiller(teacher, tiny("student", 0), labels_weight=labels_weight)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    guard = KDGuard(holdout, train, every=STEPS // 2, checks=2, verbose=False)
    history = distiller.fit(train, steps_per_epoch=STEPS, verbose=0, callbacks=[guard]).history
    return distiller, guard, history


def test_useless_teacher_falls_back_to_labels(data, capsys):
    # the Distiller's own schedule (0 -> 0.5) cannot undo the fall-back either
    distiller, guard, history = guarded_fit(tiny("random", 9), data, labels_weight=(0.0, 0.5))
    assert guard.fell_back == STEPS // 2
    assert float(distiller.labels_weight.numpy()) == 1.0
    step, kd, labels = guard.history[0]
    assert (step, len(guard.history)) == (STEPS // 2, 1) and labels < kd
    assert history["guard_kd_loss"] == [kd] and history["guard_labels_loss"] == [labels]
    # the student continued from the probe's weights, on labels only: better than at the check
    assert holdout_loss(distiller.student, data[1]) < labels


def test_good_teacher_keeps_distilling(data, good_teacher, capsys):
    distiller, guard, history = guarded_fit(good_teacher, data)
    assert guard.fell_back is None and len(guard.history) == 2
    assert all(kd < labels for _, kd, labels in guard.history)
    assert float(distiller.labels_weight.numpy()) == pytest.approx(0.2)
    # the labels-only and KD losses side by side in the history, every epoch
    assert {"hard_loss", "soft_loss", "guard_kd_loss", "guard_labels_loss"} <= set(history)


def test_guard_says_so_in_one_line(data, capsys):
    train, holdout = data
    distiller = Distiller(tiny("random", 9), tiny("student", 0), labels_weight=0.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    # a schedule listed before the guard cannot undo the fall-back
    callbacks = [ParameterSchedule("labels_weight", "constant", 0.0, 0.0),
                 KDGuard(holdout, train, every=4, checks=1)]
    distiller.fit(train, steps_per_epoch=8, verbose=0, callbacks=callbacks)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "KDGuard" in ln]
    assert len(lines) == 1 and "at step 4 labels alone beat distillation" in lines[0]
    assert float(distiller.labels_weight.numpy()) == 1.0


def test_holdout_loss_and_teacher_helps_by_hand():
    model = tiny("student", 0)
    x, y, m = counting(4, 2)
    m[:, 5:] = 0.0  # masked positions count for nothing
    logits = np.asarray(model(x)).astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(np.take_along_axis(logp, y[..., None], -1)[..., 0] * m).sum() / m.sum()
    assert holdout_loss(model, [(x, y, m)]) == pytest.approx(expected, rel=1e-5)
    assert teacher_helps(1.0, 1.2) and not teacher_helps(1.2, 1.0)
    assert not teacher_helps(1.0, 1.05, tolerance=0.1)


@pytest.mark.parametrize("kwargs, message", [
    ({"every": 0}, "every must be a positive integer, got 0"),
    ({"checks": 1.5}, "checks must be a positive integer, got 1.5"),
    ({"tolerance": 1.0}, r"tolerance must be a number in \[0, 1\)"),
    ({"holdout": []}, "holdout must hold at least one"),
])
def test_bad_guard_arguments_raise(data, kwargs, message):
    with pytest.raises(TfcompressError, match=message):
        KDGuard(**({"holdout": data[1], "data": data[0]} | kwargs))


def test_guard_outside_a_distiller_raises(data):
    student = tiny("student", 0)
    student.compile(optimizer="adam", loss=lm_loss())
    with pytest.raises(TfcompressError, match="guards a tfcompress Distiller's fit, got a"):
        student.fit(data[0], steps_per_epoch=1, verbose=0, callbacks=[KDGuard(data[1], data[0])])


def test_the_sweep_measures_the_defaults():
    from benchmarks.distill import SWEEP, KDConfig

    # KDConfig() is built from the DEFAULT_* constants: the table they are chosen from
    # (python -m benchmarks.distill --sweep) always has a row for them
    assert KDConfig() in SWEEP
    start, end = check_labels_weight(DEFAULT_LABELS_WEIGHT)
    weight = f"{start:g}" if end is None else f"{start:g}-{end:g}"
    assert KDConfig().name == f"w{weight}_T{DEFAULT_TEMPERATURE:g}_{DEFAULT_DIVERGENCE}"
    assert KDConfig().labels_weight == DEFAULT_LABELS_WEIGHT


def test_labels_weight_defaults_and_deprecated_alpha():
    teacher, student = tiny("teacher", 1), tiny("student", 0)
    d = Distiller(teacher, student)
    start, end = check_labels_weight(DEFAULT_LABELS_WEIGHT)
    assert float(d.labels_weight.numpy()) == pytest.approx(start)
    assert d.labels_weight_schedule == (None if end is None else (start, end))
    assert (float(d.temperature.numpy()), d.divergence) == (DEFAULT_TEMPERATURE,
                                                            DEFAULT_DIVERGENCE)
    with pytest.warns(DeprecationWarning, match="pass labels_weight=..."):
        old = Distiller(teacher, student, alpha=0.3)
    assert float(old.alpha.numpy()) == pytest.approx(0.3) and old.alpha is old.labels_weight
    assert old.get_config()["labels_weight"] == pytest.approx(0.3)
    with pytest.raises(TfcompressError, match=r"labels_weight must be a number in \[0, 1\]"):
        Distiller(teacher, student, labels_weight=1.5)


def test_recipe_distill_stage_uses_the_defaults_and_the_guard(tmp_path):
    """A distill stage without weights gets Distiller's defaults; guard: true notes its
    checks, scored on the valid split."""
    from tfcompress.data.sources import bundled_corpus
    from tfcompress.recipes import run_recipe

    (tmp_path / "emma.txt").write_text(bundled_corpus("austen")["train"][:20_000])
    keras.utils.set_random_seed(0)
    teacher = build_gpt("test-tiny", n_layers=2, vocab_size=256, seq_len=16, name="gpt")
    run = run_recipe({
        "model": {"object": teacher, "name": "teacher"},
        "data": {"text": str(tmp_path / "emma.txt"), "tokenizer": "byte", "seq_len": 16,
                 "batch_size": 4, "eval_windows": 8, "calibration_windows": 4},
        "stages": [{"distill": {"name": "s", "steps": 4, "learning_rate": 0.01, "guard": True,
                                "student": {"layers": [0]}}}],
        "output": str(tmp_path / "run")}, verbose=False)
    assert f"(labels weight {labels_weight_text(DEFAULT_LABELS_WEIGHT)})" in run.notes[0]
    guard = next(n for n in run.notes if n.startswith("Guard"))
    assert "step 1: KD" in guard and guard.endswith(("kept KD.", "at step 1.", "at step 2."))
