"""Hidden-state matching on tiny GPTs: a depth-pruned student matched to the blocks it was
copied from, a loss of 0 for the teacher's copy and positive otherwise, gradients to the
student only, the cosine loss, `DistillOptions` errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.core.layers import copy_model
from tfcompress.distill import Distiller, take_blocks
from tfcompress.distill.features import copied_blocks
from tfcompress.distill.losses import feature_cosine
from tfcompress.distill.options import DistillOptions
from tfcompress.errors import TfcompressError
from tfcompress.models import build_gpt

VOCAB, SEQ = 32, 8


@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(4)
    return build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, d_model=16, n_layers=3,
                     n_heads=2, name="teacher")


@pytest.fixture(scope="module")
def batch():
    x = np.random.default_rng(0).integers(0, VOCAB, (4, SEQ)).astype("int32")
    mask = np.ones((4, SEQ), "float32")
    mask[0, 5:] = 0.0
    return x, np.roll(x, -1, 1), mask


def feature_loss(distiller, batch):
    terms, _ = distiller._loss_terms(batch, training=False)
    return float(terms["feature_loss"])


def test_depth_pruned_student_matches_the_blocks_it_kept(teacher):
    student = take_blocks(teacher, [0, 2])
    assert copied_blocks(teacher, student) == [0, 2]
    assert Distiller(teacher, student, features=True).feature_pairs == [
        ("block0_add2", "block0_add2"), ("block1_add2", "block2_add2")]
    # a student of its own: spread evenly, ending at the top; explicit indices win
    keras.utils.set_random_seed(1)
    fresh = build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, d_model=16, n_layers=2,
                      n_heads=2, name="fresh")
    assert copied_blocks(teacher, fresh) is None
    assert [t for _, t in Distiller(teacher, fresh, features=True).feature_pairs] == [
        "block1_add2", "block2_add2"]
    assert [t for _, t in Distiller(teacher, fresh, features=[0, 1]).feature_pairs] == [
        "block0_add2", "block1_add2"]


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_zero_for_the_teachers_copy_positive_otherwise(teacher, batch, loss):
    copy = Distiller(teacher, copy_model(teacher), features=True, feature_loss=loss)
    assert copy.feature_pairs == [(f"block{i}_add2",) * 2 for i in range(3)]
    assert feature_loss(copy, batch) == pytest.approx(0.0, abs=1e-6)
    # block 2 kept alone reads the embeddings, not block 1's output: its states differ
    pruned = Distiller(teacher, take_blocks(teacher, [2]), features=True, feature_loss=loss)
    assert feature_loss(pruned, batch) > 1e-3


def test_gradients_reach_the_student_only(teacher, batch):
    keras.utils.set_random_seed(2)
    student = build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, d_model=8, n_layers=1,
                        n_heads=2, name="narrow")
    distiller = Distiller(teacher, student, features=True, feature_weight=1.0)
    assert distiller.projections[0].kernel.shape == (8, 16)  # learned: widths differ
    with tf.GradientTape(persistent=True) as tape:
        terms, _ = distiller._loss_terms(batch, training=True)
    student_grads = tape.gradient(terms["feature_loss"], distiller.student_variables)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0
               for g in student_grads[-1:] + student_grads[:1])
    assert all(g is None for g in tape.gradient(terms["feature_loss"],
                                                teacher.trainable_weights))
    assert {id(v) for v in distiller.trainable_variables}.isdisjoint(
        id(v) for v in teacher.weights)


def test_cosine_by_hand():
    s = np.array([[[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]]])
    t = np.array([[[0.0, 2.0], [6.0, 8.0], [-1.0, -1.0]]])
    # 1 - cos per position: 1, 0, 2; the third position masked out
    assert float(feature_cosine(s, t, [[1.0, 1.0, 0.0]])) == pytest.approx(0.5)


@pytest.mark.parametrize("config, message", [
    ({"feature_los": "mse"}, r"no setting 'feature_los' \(did you mean 'feature_loss'\?\)"),
    ({"feature_loss": "l1"}, r"feature_loss must be one of \['mse', 'cosine'\], got 'l1'"),
    ({"feature_weight": -1}, r"feature_weight must be a number >= 0, got -1"),
])
def test_bad_options(config, message):
    with pytest.raises(TfcompressError, match=message):
        DistillOptions.from_config(config)


def test_bad_block_indices(teacher):
    with pytest.raises(TfcompressError, match=r"one teacher block in \[0, 3\) for each of the "
                                              r"student's 1 blocks, got \[5\]"):
        Distiller(teacher, take_blocks(teacher, [0]), features=[5])


@pytest.fixture(scope="module")
def hub_teacher():
    """A tiny random KerasHub GPT-2 of 2 blocks, token ids -> logits as a recipe wraps it."""
    keras_hub = pytest.importorskip("keras_hub")
    from tfcompress.recipes.sources import ids_to_logits

    keras.utils.set_random_seed(5)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=SEQ)
    return ids_to_logits(keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None))


@pytest.mark.parametrize("kept", [0, 1])
def test_kerashub_depth_student_matches_its_transformer_layers(hub_teacher, batch, kept):
    from tfcompress.recipes.students import make_student

    student = make_student(hub_teacher, {"layers": [kept]}, seq_len=SEQ)
    assert copied_blocks(hub_teacher, student) == [kept]
    distiller = Distiller(hub_teacher, student, features=True)
    assert distiller.feature_pairs == [("transformer_layer_0", f"transformer_layer_{kept}")]
    x = batch[0]
    for model, extractor in ((hub_teacher, distiller._teacher_features),
                             (student, distiller._student_features)):
        logits, state = extractor(x)  # the model's own logits, and one block's output
        np.testing.assert_allclose(logits, model(x), atol=1e-5)
        assert tuple(state.shape) == (4, SEQ, 16)
    # the loss against the two blocks' outputs read off each backbone's own graph: 0 where
    # block 0 is kept (it sees what the teacher's sees), else block 1 reads the embeddings
    s, t = (block_output(m, n, x) for m, n in ((student, "transformer_layer_0"),
                                               (hub_teacher, f"transformer_layer_{kept}")))
    per_token = np.mean((s - t) ** 2, axis=-1)
    expected = float(np.sum(per_token * batch[2]) / np.sum(batch[2]))
    assert (expected == 0.0) == (kept == 0)
    assert feature_loss(distiller, batch) == pytest.approx(expected, rel=1e-4, abs=1e-9)


def block_output(model, name: str, x) -> np.ndarray:
    backbone = model.layers[-1].backbone
    probe = keras.Model(backbone.input, backbone.get_layer(name).output)
    return np.asarray(probe({"token_ids": x, "padding_mask": np.ones_like(x)}))


def test_a_kerashub_model_not_wrapped_as_token_ids_to_logits_is_refused(hub_teacher):
    lm = hub_teacher.layers[-1]
    ids = keras.Input((None,), dtype="int32")
    scaled = keras.Model(ids, lm({"token_ids": ids, "padding_mask": keras.ops.ones_like(ids)})
                         * 2.0)
    with pytest.raises(TfcompressError, match=r"holds a KerasHub CausalLM but not as token ids"):
        Distiller(hub_teacher, scaled, features=True)
