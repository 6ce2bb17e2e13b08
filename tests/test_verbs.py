"""Every method package is callable as its verb (`tfcompress.core.modules`), `distill` included."""

import inspect

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress.errors import TfcompressError
from tfcompress.models import build_gpt

VOCAB, SEQ = 32, 8


def test_every_method_package_is_its_verb():
    verbs = {"distill": tfcompress.distill.distill, "prune": tfcompress.prune.prune,
             "quantize": tfcompress.quantize.quantize, "lowrank": tfcompress.lowrank.factorize,
             "evaluate": tfcompress.evaluate.evaluate}
    for package, verb in verbs.items():
        module = getattr(tfcompress, package)
        assert callable(module) and module.__verb__ is verb, package
        assert inspect.signature(module) == inspect.signature(verb), package
    assert not callable(tfcompress.export)  # two verbs: export_tflite and export_llm


def test_distill_trains_a_copy_of_the_student_towards_the_teacher():
    keras.utils.set_random_seed(0)
    teacher = build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, n_layers=2, name="teacher")
    student = build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, n_layers=1, name="student")
    ids = np.random.default_rng(0).integers(0, VOCAB, (4, SEQ + 1)).astype("int32")
    batches = [(ids[:2, :-1], ids[:2, 1:]), (ids[2:, :-1], ids[2:, 1:])]
    before = [w.copy() for w in student.get_weights()]
    trained = tfcompress.distill(teacher, student, batches, steps=3, learning_rate=1e-2,
                                 verbose=0)
    assert trained is not student
    for a, b in zip(before, student.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the user's student is untouched
    assert any(not np.allclose(a, b) for a, b in zip(before, trained.get_weights(), strict=True))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"steps": 0}, "steps must be a positive integer, got 0"),
    ({"steps": 2, "data": []}, r"data is empty: give at least one \(x, y\[, mask\]\) batch"),
    ({"steps": 2, "labels_weight": (0.3,)}, r"labels_weight must be a number in \[0, 1\] or "
                                             r"a pair \(start, end\) of them, got \(0.3,\)"),
    ({"steps": 2, "temperature": 0}, "temperature must be a number > 0, got 0"),
    ({"steps": 2, "learning_rate": -1}, "learning_rate must be a number > 0, got -1"),
    ({"steps": 2, "divergence": "kl"}, r"divergence must be one of \[.*'forward_kl'.*\], "
                                       "got 'kl'"),
    ({"steps": 2, "teacher": build_gpt("test-tiny", vocab_size=VOCAB + 1, seq_len=SEQ,
                                       n_layers=1)},
     f"teacher and student vocabularies must match: teacher has {VOCAB + 1} logits, "
     f"student {VOCAB}"),
])
def test_distill_checks_its_arguments_first(kwargs, match, monkeypatch):
    import tfcompress.distill.api as api

    def no_copy(model):
        raise AssertionError("the student was copied before the arguments were checked")

    monkeypatch.setattr(api, "copy_model", no_copy)
    model = build_gpt("test-tiny", vocab_size=VOCAB, seq_len=SEQ, n_layers=1)
    ids = np.zeros((2, SEQ), "int32")
    with pytest.raises(TfcompressError, match=match):
        tfcompress.distill(**{"teacher": model, "student": model, "data": [(ids, ids)],
                              **kwargs})
