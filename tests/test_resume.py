"""Interrupted compression runs resume exactly: pruning masks and schedule, QAT layers; and
every saved compressed model reloads.

Each case trains a tiny model for 4 epochs of 2 steps. Against that uninterrupted run, (a) a
run that crashes at step 5 and restarts with `keras.callbacks.BackupAndRestore`, and (b) a run
saved to ``.keras`` after 2 epochs, reloaded and continued, must end with bitwise equal
weights, masks and optimizer variables.
"""

import keras
import numpy as np
import pytest

from tfcompress.core.layers import iter_layers
from tfcompress.core.saving import compression_state
from tfcompress.prune import PruneConfig, UpdatePruning, prune, sparsity_summary
from tfcompress.quantize import qat

VOCAB, SEQ, EPOCHS, STEPS, CRASH_AT = 16, 4, 4, 2, 5
SCHEDULE = {"class_name": "PolynomialDecay",
            "config": {"initial_sparsity": 0.0, "final_sparsity": 0.5, "begin_step": 0,
                       "end_step": 6, "frequency": 2}}
CASES = {
    "scheduled_pruning": lambda m: prune(m, PruneConfig(schedule=SCHEDULE)),
    "oneshot_prune_finetune": lambda m: prune(m, sparsity=0.5),
    "qat": lambda m: qat(m, bits=4, granularity="group", group_size=4),
}


def base_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8)(inputs)
    x = keras.layers.Dense(8, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(VOCAB)(x))


def data():
    rng = np.random.default_rng(0)
    return (rng.integers(0, VOCAB, (STEPS * 4, SEQ)).astype("int32"),
            rng.integers(0, VOCAB, (STEPS * 4, SEQ)).astype("int32"))


def compile_(model):
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def fit(model, epochs, callbacks=(), initial_epoch=0):
    x, y = data()
    model.fit(x, y, batch_size=4, epochs=epochs, initial_epoch=initial_epoch, shuffle=False,
              verbose=0, callbacks=[UpdatePruning(), *callbacks]
              if "prune" in compression_state(model) else list(callbacks))
    return model


def state(model) -> list[np.ndarray]:
    masks = getattr(model, "tfc_prune_masks", None)
    return [np.asarray(v) for v in (model.weights + model.optimizer.variables
                                    + (masks.weights if masks else []))]


class Crash(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == CRASH_AT:
            raise RuntimeError("crash")


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    make = CASES[request.param]
    return make, state(fit(compile_(make(base_model())), EPOCHS))


def _kinds(model) -> list:
    """The compression each layer holds (None for plain ones), pruning masks as "prune"."""
    masks = ["prune"] if "prune" in compression_state(model) else []
    return [getattr(la, "compression", None) for _, la in iter_layers(model)] + masks


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_crash_and_backup_and_restore_resume_exactly(case, tmp_path):
    make, want = case
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="crash"):
        fit(compile_(make(base_model())), EPOCHS, [backup, Crash()])
    resumed = fit(compile_(make(base_model())), EPOCHS, [backup])  # a fresh process would
    assert_same(state(resumed), want)
    if make is CASES["scheduled_pruning"]:  # the schedule went on past the crash
        assert sparsity_summary(resumed)["total"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_save_midway_reload_and_continue_exactly(case, tmp_path):
    make, want = case
    model = fit(compile_(make(base_model())), EPOCHS // 2)
    model.save(tmp_path / "mid.keras")
    again = keras.models.load_model(tmp_path / "mid.keras")
    assert compression_state(again) == compression_state(model)
    assert_same(state(fit(again, EPOCHS, initial_epoch=EPOCHS // 2)), want)


@pytest.mark.parametrize("method", ["keras_int8", "keras_int4"])
def test_keras_modes_with_attention_save_and_reload(method, tmp_path):
    from tfcompress.quantize import quantize

    inputs = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8)(inputs)
    x = keras.layers.MultiHeadAttention(2, 4, name="attn")(x, x)
    model = keras.Model(inputs, keras.layers.Dense(VOCAB)(x))
    q = quantize(model, method=method, granularity="group", group_size=4, verbose=0)
    q.save(tmp_path / "q.keras")
    again = keras.models.load_model(tmp_path / "q.keras")
    ids = data()[0]
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(q(ids)))
    assert 0 < np.abs(np.asarray(q(ids)) - np.asarray(model(ids))).max() < 0.1


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class TinySubclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = keras.layers.Embedding(VOCAB, 8)
        self.head = keras.layers.Dense(VOCAB)

    def call(self, x):
        return self.head(self.embed(x))


def sequential():
    return keras.Sequential([keras.Input((SEQ,), dtype="int32"), keras.layers.Embedding(VOCAB, 8),
                             keras.layers.Dense(VOCAB)])


@pytest.mark.parametrize("kind", ["sequential", "subclassed"])
@pytest.mark.parametrize("method", ["prune", "qat", "quantize"])
def test_any_model_reloads_with_its_state(kind, method, tmp_path):
    """Reloaded subclassed models get new auto-generated layer names: the state finds its
    layers by their saved order."""
    from tfcompress.quantize import quantize

    ids = data()[0]
    model = sequential() if kind == "sequential" else TinySubclassed()
    model(ids)
    make = {"prune": lambda m: prune(m, sparsity=0.5, inplace=True),
            "qat": lambda m: qat(m, inplace=True),
            "quantize": lambda m: quantize(m, bits=4, verbose=0, inplace=True)}[method]
    compressed = make(model)
    compressed.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert list(compression_state(again)) == list(compression_state(compressed))
    assert _kinds(again) == _kinds(compressed) and method in _kinds(compressed)
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(compressed(ids)))
    if method == "prune":
        assert_same(again.tfc_prune_masks.weights, compressed.tfc_prune_masks.weights)
