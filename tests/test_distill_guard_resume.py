"""KDGuard beyond a plain fit: a run interrupted and resumed with BackupAndRestore continues
the same probe (same checks as a run never interrupted), a resume without ``backup_dir``
warns, and a KerasHub student (tiny random GPT-2, no preset) is guarded."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.core.signature import input_view
from tfcompress.distill import Distiller, KDGuard
from tfcompress.distill.guard import STATE_FILE, holdout_loss
from tfcompress.models import build_gpt

VOCAB, SEQ, BATCH = 16, 8, 8


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


TRAIN = tf.data.Dataset.from_tensor_slices(counting(16, 0)).batch(BATCH)  # 2 batches an epoch
HOLDOUT = [counting(8, 1)]


class Crash(keras.callbacks.Callback):
    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.seen = at_step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at_step:
            raise RuntimeError("simulated crash")


def guarded(callbacks, backup=None, epochs=3, initial_epoch=0):
    """A fresh Distiller (as a new process builds it) and its guard, fitted 3 epochs: checks
    at steps 2, 4 and 6, the last in epoch 3."""
    distiller = Distiller(tiny("teacher", 1), tiny("student", 0), labels_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
    guard = KDGuard(HOLDOUT, TRAIN, every=2, checks=3, patience=3, verbose=False,
                    backup_dir=backup)
    distiller.fit(TRAIN, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
                  callbacks=[*callbacks, guard])
    return distiller, guard


def test_resumed_fit_continues_the_probe(tmp_path):
    reference, ref_guard = guarded([])
    assert [s for s, _, _ in ref_guard.history] == [2, 4, 6]
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="simulated crash"):  # in epoch 3, after 2 checks
        guarded([keras.callbacks.BackupAndRestore(str(backup)), Crash(at_step=5)], backup)
    assert (backup / STATE_FILE).is_file()
    distiller, guard = guarded([keras.callbacks.BackupAndRestore(str(backup))], backup)
    assert guard.history == ref_guard.history  # the checks before the crash restored, same probe
    for a, b in zip(distiller.student.get_weights(), reference.student.get_weights(),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert not backup.exists()  # fit ended: nothing left to resume


def test_resume_without_backup_dir_warns():
    # a fit that starts past epoch 0, as BackupAndRestore's resume does, with a fresh guard
    with pytest.warns(UserWarning, match=r"fit starts at epoch 1 \(resumed\?\) with a new "
                                         r"labels-only probe: give KDGuard\(backup_dir=\.\.\.\)"):
        _, guard = guarded([], epochs=2, initial_epoch=1)
    assert [s for s, _, _ in guard.history] == [2]  # counted from the resume: a new probe


def test_kerashub_student_is_guarded():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32,
                                             max_sequence_length=SEQ)
    student = input_view(keras_hub.models.GPT2CausalLM(backbone, preprocessor=None), SEQ)
    distiller = Distiller(tiny("random", 9), student, labels_weight=0.2)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    guard = KDGuard(HOLDOUT, TRAIN.repeat(), every=8, checks=2, verbose=False)
    before = holdout_loss(student, HOLDOUT)
    distiller.fit(TRAIN.repeat(), steps_per_epoch=12, verbose=0, callbacks=[guard])
    # a random teacher: the labels-only probe of the KerasHub student wins the first check
    step, kd, labels = guard.history[0]
    assert (guard.fell_back, step) == (8, 8) and labels < min(kd, before)
    assert float(distiller.labels_weight.numpy()) == 1.0
    assert holdout_loss(distiller.student, HOLDOUT) < labels
