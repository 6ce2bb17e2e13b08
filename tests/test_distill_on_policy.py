"""On-policy distillation (GKD): the sampling functions on arrays, and a Distiller whose traced
train step trains on exactly what its student samples; ``on_policy=0`` changes nothing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.core.layers import copy_model
from tfcompress.core.losses import lm_loss
from tfcompress.distill import Distiller
from tfcompress.distill.on_policy import continuation_targets, replaced, sample_continuations
from tfcompress.errors import TfcompressError
from tfcompress.models import build_gpt

VOCAB, SEQ, BATCH, PROMPT = 16, 8, 4, 3


def bigram(table):
    """A causal logits function: position t's logits are row ``ids[t]`` of ``table``."""
    table = tf.constant(table, tf.float32)
    return lambda ids: tf.gather(table, ids)


def test_samples_follow_the_chain_left_to_right_and_keep_the_prompt():
    # token k is followed by (k + 1) % 4 with certainty: each draw reads the one before it
    table = np.eye(4)[[1, 2, 3, 0]] * 60.0
    tokens = np.array([[2, 2, 0, 0, 0, 0], [1, 3, 3, 3, 3, 3]])
    got = sample_continuations(bigram(table), tokens, 2, seed=[0, 5]).numpy()
    np.testing.assert_array_equal(got, [[2, 2, 3, 0, 1, 2], [1, 3, 0, 1, 2, 3]])


def test_same_seed_same_samples_other_seed_others():
    table = np.zeros((VOCAB, VOCAB))  # uniform: every draw is the seed's
    tokens = np.zeros((64, SEQ), np.int32)
    a, b = (sample_continuations(bigram(table), tokens, PROMPT, seed=[1, s]).numpy()
            for s in (0, 0))
    c = sample_continuations(bigram(table), tokens, PROMPT, seed=[1, 1]).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a[:, PROMPT:] != c[:, PROMPT:]).mean() > 0.8
    np.testing.assert_array_equal(a[:, :PROMPT], 0)
    # position t is drawn with the stateless seed fold_in(seed, t)
    first = tf.random.stateless_categorical(
        tf.zeros((64, VOCAB)), 1, seed=tf.random.experimental.stateless_fold_in([1, 0], PROMPT),
        dtype=tf.int32)[:, 0]
    np.testing.assert_array_equal(a[:, PROMPT], first.numpy())


def test_targets_and_mask_score_the_positions_that_predict_samples():
    targets, mask = continuation_targets([[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]], 2,
                                         mask=[[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(targets, [[6, 7, 8, 9, 9], [2, 3, 4, 5, 5]])
    # positions 1..3 predict the sampled ids 2..4; row 2's prompt ends on a padded position
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1, 0], [0, 0, 0, 0, 0]])


def test_replaced_is_a_seeded_draw_with_the_given_probability():
    draws = [bool(replaced(0.3, [7, step])) for step in range(400)]
    assert draws == [bool(replaced(0.3, [7, step])) for step in range(400)]
    assert 0.22 < np.mean(draws) < 0.38
    assert all(replaced(1.0, [0, s]) for s in range(5))
    assert not any(replaced(0.0, [0, s]) for s in range(5))


def tiny(name, seed):
    keras.utils.set_random_seed(seed)
    return build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, d_model=16, n_layers=1,
                     n_heads=2, name=name)


@pytest.fixture(scope="module")
def models():
    return tiny("teacher", 1), tiny("student", 0)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (BATCH, SEQ)).astype("int32")
    return x, np.roll(x, -1, 1), np.ones((BATCH, SEQ), "float32")


def trained(teacher, student, data, **kwargs):
    distiller = Distiller(teacher, copy_model(student), **kwargs)
    distiller.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    x, y, mask = data
    distiller.fit(x, y, sample_weight=mask, batch_size=BATCH, epochs=1, shuffle=False,
                  verbose=0)
    return distiller


def test_traced_step_trains_on_the_students_samples_with_the_divergence_alone(models, batch):
    teacher, student = models
    x, _, mask = batch
    ids, targets, scored = Distiller(teacher, copy_model(student), on_policy=1.0,
                                     prompt_length=PROMPT, sample_seed=3).on_policy_batch(
        x, mask, step=0)
    ids = ids.numpy()
    np.testing.assert_array_equal(ids[:, :PROMPT], x[:, :PROMPT])
    assert (ids[:, PROMPT:] != x[:, PROMPT:]).any()
    # the student's first sample: from its own logits after the prompt, seed fold_in(seed, P)
    logits = student(x, training=False)[:, PROMPT - 1]
    first = tf.random.stateless_categorical(
        logits, 1, seed=tf.random.experimental.stateless_fold_in([3, 0], PROMPT),
        dtype=tf.int32)[:, 0]
    np.testing.assert_array_equal(ids[:, PROMPT], first.numpy())
    on_policy = trained(teacher, student, batch, on_policy=1.0, prompt_length=PROMPT,
                        sample_seed=3, labels_weight=0.9)
    # = a step on those very ids, scored by the teacher with no labels term
    reference = trained(teacher, student, (ids, targets.numpy(), scored.numpy()),
                        labels_weight=0.0)
    for a, b in zip(on_policy.student.get_weights(), reference.student.get_weights(),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(on_policy.student.get_weights()[0], student.get_weights()[0])


def test_on_policy_zero_is_the_plain_step_bit_for_bit(models, batch):
    teacher, student = models
    distilled = trained(teacher, student, batch, on_policy=0.0, labels_weight=1.0)
    plain = copy_model(student)
    plain.compile(optimizer=keras.optimizers.SGD(0.5), loss=lm_loss(), jit_compile=False)
    x, y, mask = batch
    plain.fit(x, y, sample_weight=mask, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(distilled.student.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_mixed_batches_without_mask_train_and_save(models, batch, tmp_path):
    teacher, student = models
    x, y, _ = batch
    distiller = Distiller(teacher, copy_model(student), on_policy=0.5)  # prompt: half the window
    distiller.compile(optimizer="adam")  # Keras's default compile (jit "auto")
    before = distiller.student.get_weights()[0].copy()
    distiller.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat(),
                  steps_per_epoch=4, verbose=0)
    assert not np.allclose(distiller.student.get_weights()[0], before)
    ids, _, scored = distiller.on_policy_batch(x)
    assert scored.numpy().sum(1).tolist() == [SEQ // 2] * BATCH  # positions 3..6 score
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert (loaded.on_policy, loaded.prompt_length) == (0.5, None)


@pytest.mark.parametrize("kwargs, message", [
    ({"on_policy": 1.5}, r"on_policy must be a probability in \[0, 1\].*got 1.5"),
    ({"on_policy": 0.5, "prompt_length": 0}, r"prompt_length must be a positive integer.*got 0"),
])
def test_bad_on_policy_arguments(models, kwargs, message):
    with pytest.raises(TfcompressError, match=message):
        Distiller(*models, **kwargs)


@pytest.mark.parametrize("as_dataset", [False, True])
def test_prompt_as_long_as_the_window_fails_before_training(models, batch, as_dataset):
    teacher, student = models
    distiller = Distiller(teacher, copy_model(student), on_policy=0.5, prompt_length=SEQ)
    distiller.compile(optimizer="sgd")
    data = (tf.data.Dataset.from_tensor_slices(batch).batch(BATCH),) if as_dataset else batch
    before = distiller.student.get_weights()[0].copy()
    with pytest.raises(TfcompressError, match=rf"prompt_length must be below the training "
                                              rf"windows' {SEQ} tokens.*got {SEQ}"):
        distiller.fit(*data[:2], verbose=0)
    np.testing.assert_array_equal(distiller.student.get_weights()[0], before)


def test_on_policy_needs_an_online_teacher(models):
    with pytest.raises(TfcompressError, match="on_policy needs an online teacher"):
        Distiller(None, models[1], on_policy=0.5)
