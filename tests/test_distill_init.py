"""Block importance and students initialised from the teacher's blocks."""

import keras
import numpy as np
import pytest

import tfcompress  # noqa: F401  (sets the Keras backend)
from tfcompress.distill import block_importance, most_important, take_blocks
from tfcompress.distill.init import cosine_importance
from tfcompress.errors import TfcompressError
from tfcompress.models import LlamaConfig, build_gpt, build_llama
from tfcompress.models.gpt import gpt_config_of

VOCAB, SEQ = 40, 8


def test_cosine_importance_by_hand_and_masked():
    a = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    b = np.array([[[1.0, 0.0], [0.0, 2.0]]])  # cosines 1 and 0
    assert cosine_importance(a, b) == pytest.approx(0.5)
    assert cosine_importance(a, b, mask=[[1.0, 0.0]]) == pytest.approx(0.0)
    assert cosine_importance(a, -a) == pytest.approx(2.0)


def test_most_important_keeps_block_order_and_checks_n_keep():
    assert most_important([0.5, 0.1, 0.9, 0.2], 2) == [0, 2]
    assert most_important([0.3, 0.3, 0.1], 2) == [0, 1]
    with pytest.raises(TfcompressError, match=r"n_keep must be an integer in \[1, 3\], got 4"):
        most_important([0.3, 0.3, 0.1], 4)


def silence(model, block):
    """Zero a GPT block's attention-output and MLP-output projections: it becomes identity."""
    for w in model.weights:
        if w.path.startswith(f"block{block}_") and ("attention_output" in w.path
                                                    or "_mlp_out" in w.path):
            w.assign(np.zeros(w.shape, np.float32))


def test_silenced_blocks_score_zero_and_take_blocks_drops_them_exactly():
    keras.utils.set_random_seed(0)
    teacher = build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, d_model=16, n_layers=4,
                        n_heads=2, name="teacher")
    silence(teacher, 0)
    silence(teacher, 2)
    x = np.random.default_rng(0).integers(0, VOCAB, (4, SEQ)).astype(np.int32)
    mask = np.ones((4, SEQ), np.float32)
    scores = block_importance(teacher, [(x, np.roll(x, -1, 1), mask)])
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores[[0, 2]], 0.0, atol=1e-6)
    assert scores[1] > 1e-4 and scores[3] > 1e-4
    keep = most_important(scores, 2)
    assert keep == [1, 3]
    before = [w.copy() for w in teacher.get_weights()]
    student = take_blocks(teacher, keep)
    assert gpt_config_of(student) == gpt_config_of(teacher).__class__(
        **{**gpt_config_of(teacher).get_config(), "n_layers": 2})
    # dropping identity blocks changes nothing: same logits as the teacher
    np.testing.assert_allclose(student(x), teacher(x), atol=1e-5)
    for a, b in zip(before, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TfcompressError, match=r"distinct block indices in \[0, 4\), got \[0, 4\]"):
        take_blocks(teacher, [0, 4])


def test_llama_blocks_are_scored_and_taken():
    keras.utils.set_random_seed(0)
    model = build_llama(LlamaConfig(vocab_size=VOCAB, d_model=16, n_layers=4, n_heads=2,
                                    n_kv_heads=1, d_ff=24))
    x = np.random.default_rng(1).integers(0, VOCAB, (2, SEQ)).astype(np.int32)
    scores = block_importance(model, [x])
    assert scores.shape == (4,) and np.all(scores > 0)
    student = take_blocks(model, most_important(scores, 2))
    assert sum(1 for la in student.layers if la.name.endswith("_attention")) == 2
    with pytest.raises(TfcompressError, match="no blocks named block0_add2"):
        block_importance(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), [x])


def toy_blocks_model(n: int, name: str = "toy") -> keras.Model:
    """Blocks named as block_count reads them (``block{i}_add1``/``_add2``), of no known family."""
    x = inp = keras.Input((SEQ, 4))
    for i in range(n):
        h = keras.layers.Dense(4, name=f"block{i}_dense")(x)
        x = keras.layers.Add(name=f"block{i}_add1")([x, h])
        x = keras.layers.Add(name=f"block{i}_add2")([x, h])
    return keras.Model(inp, x, name=name)


def test_take_blocks_reaches_a_family_registered_from_above_and_names_the_missing_one():
    from tfcompress.core import shallow

    model = toy_blocks_model(3)
    with pytest.raises(TfcompressError, match=r"model 'toy' belongs to no family with a "
                       r"shallower copy; registered: \['gpt', 'llama'\]"):
        take_blocks(model, [0, 2])
    shallow.register_shallow_copy(
        "toy", lambda m: m.name == "toy", lambda m, keep, name: toy_blocks_model(len(keep), name))
    try:
        student = take_blocks(model, [0, 2], name="kept")
        assert student.name == "kept" and student.get_layer("block1_add2") is not None
    finally:
        shallow._FAMILIES.pop("toy")
