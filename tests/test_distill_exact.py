"""Exact equivalences of the Distiller with plain training, and exact resume after a crash."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.distill import (
    Distiller,
    ParameterSchedule,
    SoftTargetLoss,
    cache_teacher,
    load_teacher_cache,
    with_teacher_logits,
)
from tfcompress.models import build_gpt
from tfcompress.models.training import lm_loss

VOCAB, SEQ, BATCH, STEPS = 48, 8, 4, 4


def tiny(name, d_model=16, n_layers=1, seed=0, dropout=0.0):
    keras.utils.set_random_seed(seed)
    return build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, d_model=d_model,
                     n_layers=n_layers, n_heads=2, dropout=dropout, name=name)


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (2 * BATCH, SEQ)).astype(np.int32)
    mask = np.ones((2 * BATCH, SEQ), np.float32)
    mask[-1, SEQ // 2:] = 0.0  # padding: the reduction over masked tokens must agree too
    return x, np.roll(x, -1, axis=1), mask


def batches(arrays, repeat=False):
    ds = tf.data.Dataset.from_tensor_slices(arrays).batch(BATCH)
    return ds.repeat() if repeat else ds


def optimizer():
    """AdamW with warm-up, cosine decay, weight decay and clipping: every state Keras keeps."""
    lr = keras.optimizers.schedules.CosineDecay(0.0, STEPS, alpha=0.1, warmup_target=1e-2,
                                                warmup_steps=1)
    return keras.optimizers.AdamW(lr, weight_decay=0.01, clipnorm=1.0)


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_alpha_one_trains_the_student_exactly_as_plain_fit(arrays):
    teacher = tiny("teacher", d_model=32, seed=1, dropout=0.1)
    plain = tiny("student", dropout=0.1)  # dropout: training mode and its RNG must match
    plain.compile(optimizer=optimizer(), loss=lm_loss())
    plain.fit(batches(arrays, repeat=True), steps_per_epoch=STEPS, verbose=0)

    student = tiny("student", dropout=0.1)
    distiller = Distiller(teacher, student, alpha=1.0, temperature=2.0)
    distiller.compile(optimizer=optimizer())
    distiller.fit(batches(arrays, repeat=True), steps_per_epoch=STEPS, verbose=0)
    assert_same(plain.get_weights(), student.get_weights())
    # the optimizer holds the student's slots only, the same ones as plain fit
    assert_same(plain.optimizer.variables, distiller.optimizer.variables)


def test_soft_target_loss_alpha_one_trains_exactly_as_plain_fit(arrays):
    teacher = tiny("teacher", d_model=32, seed=1)
    plain = tiny("student")
    plain.compile(optimizer=optimizer(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)
    plain.fit(batches(arrays, repeat=True), steps_per_epoch=STEPS, verbose=0)

    student = tiny("student")
    student.compile(optimizer=optimizer(), loss=SoftTargetLoss(alpha=1.0, temperature=2.0),
                    run_eagerly=True)
    student.fit(with_teacher_logits(batches(arrays, repeat=True), teacher),
                steps_per_epoch=STEPS, verbose=0)
    assert_same(plain.get_weights(), student.get_weights())


def test_alpha_zero_gradient_is_the_hand_computed_kl_gradient(arrays):
    x, y, mask = arrays
    x, y, mask = x[:BATCH], y[:BATCH], mask[:BATCH]
    teacher = tiny("teacher", d_model=32, seed=1)
    # logits = a row of a table, so d(loss)/d(table) can be written down by hand
    ids = keras.Input((None,), dtype="int32")
    student = keras.Model(ids, keras.layers.Embedding(VOCAB, VOCAB, name="table")(ids))
    table = np.random.default_rng(1).normal(size=(VOCAB, VOCAB)).astype(np.float32)
    student.set_weights([table])
    distiller = Distiller(teacher, student, alpha=0.0, temperature=1.0)
    distiller.compile(optimizer=keras.optimizers.SGD(1.0))  # one step moves by -gradient
    distiller.fit(batches((x, y, mask)), verbose=0)

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(np.asarray(teacher(x), np.float64)), softmax(table[x].astype(np.float64))
    # d KL(p || q) / d student logits = q - p, averaged over the tokens the mask keeps
    per_token = (q - p) * (mask / mask.sum())[..., None]
    expected = np.zeros_like(table, np.float64)
    np.add.at(expected, x, per_token)
    np.testing.assert_allclose(table - student.get_weights()[0], expected, atol=1e-6)


class Crash(keras.callbacks.Callback):
    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.seen = at_step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at_step:
            raise RuntimeError("simulated crash")


KINDS = ("logits", "features", "cached")


def make_distiller(kind, cache):
    """A fresh Distiller as a new process would build it (same seeds, nothing trained)."""
    student = tiny("student")
    teacher = None if kind == "cached" else tiny("teacher", d_model=32, n_layers=2, seed=1)
    distiller = Distiller(teacher, student, alpha=0.5, temperature=2.0,
                          features=kind == "features")
    # eager: no tracing per fit keeps this test fast; the state saved and restored is the same
    distiller.compile(optimizer=optimizer(), run_eagerly=True)
    data = load_teacher_cache(cache, BATCH) if kind == "cached" else None
    return distiller, data


@pytest.fixture(scope="module")
def cache(arrays, tmp_path_factory):
    teacher = tiny("teacher", d_model=32, n_layers=2, seed=1)
    return cache_teacher(teacher, batches(arrays), tmp_path_factory.mktemp("c") / "cache",
                         top_k=8, verbose=False)


def state(distiller):
    return ([w.numpy() for w in distiller.trainable_variables],
            [v.numpy() for v in distiller.optimizer.variables], float(distiller.alpha.numpy()))


@pytest.mark.parametrize("kind", KINDS)
def test_crash_backup_restore_then_keras_file_resume_exactly(kind, arrays, cache, tmp_path):
    """3 epochs straight vs: crash in epoch 2, BackupAndRestore restart to the end of epoch 2,
    save to .keras, reload, run epoch 3. Weights, optimizer state and alpha agree bitwise."""

    def run(distiller, data, callbacks, epochs=3, initial_epoch=0):
        schedule = ParameterSchedule("alpha", "linear", start=0.9, end=0.1, steps=6)
        distiller.fit(data or batches(arrays), epochs=epochs, initial_epoch=initial_epoch,
                      verbose=0, callbacks=[schedule, *callbacks])
        return distiller

    reference = state(run(*make_distiller(kind, cache), []))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(*make_distiller(kind, cache),
            [keras.callbacks.BackupAndRestore(str(tmp_path / "b")), Crash(at_step=3)])
    distiller, data = make_distiller(kind, cache)
    run(distiller, data, [keras.callbacks.BackupAndRestore(str(tmp_path / "b"))], epochs=2)
    distiller.save(tmp_path / "distiller.keras")
    loaded = run(keras.models.load_model(tmp_path / "distiller.keras"), data, [],
                 initial_epoch=2)
    got = state(loaded)
    assert_same(reference[0], got[0])
    assert_same(reference[1], got[1])  # same count too: no slots for the teacher
    assert reference[2] == got[2]
