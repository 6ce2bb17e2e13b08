"""Pruning Keras 3 models: one-shot, schedules in fit, N:M, structured, strip, KerasHub."""

import keras
import numpy as np
import pytest

from tfcompress.core.layers import kernel_matrix, kernel_of, select_layers
from tfcompress.errors import TfcompressError
from tfcompress.models import build_gpt
from tfcompress.prune import (
    PruneConfig,
    UpdatePruning,
    keep_zeros,
    prune,
    sparsity_summary,
    strip_pruning,
    summary_table,
)
from tfcompress.prune.training import pruning_state


@pytest.fixture(scope="module")
def gpt():
    keras.utils.set_random_seed(0)
    return build_gpt("test-tiny", vocab_size=64, seq_len=16)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, 64, (4, 16)).astype("int32")


def kernels(model):
    return {p: kernel_matrix(la).copy() for p, la in select_layers(model)}


def compiled(model):
    # eager: tracing the train step would dominate these few-step fits
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    return model


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_one_shot_exact_per_layer_sparsity_and_user_model_unchanged(gpt, ids, method):
    before = kernels(gpt)
    pruned = prune(gpt, PruneConfig(method=method, sparsity=0.5), calibration=ids)
    after = kernels(gpt)
    assert all(np.array_equal(before[p], after[p]) for p in before)
    summary = sparsity_summary(pruned)
    assert summary["layers"] and all(r["sparsity"] == 0.5 for r in summary["layers"].values())
    assert "**total**" in summary_table(summary)
    assert pruned(ids).shape == (4, 16, 64)
    # the attached masks are bool (1 byte a weight), false at the zeros
    layers = dict(select_layers(pruned))
    for path, mask in pruning_state(pruned).masks.items():
        kernel = kernel_of(layers[path]).numpy()
        assert mask.dtype == "bool"
        assert np.array_equal(mask.numpy(), kernel != 0)


def test_global_scope_exact_total(gpt):
    pruned = prune(gpt, sparsity=0.7, scope="global")
    summary = sparsity_summary(pruned)
    assert summary["total"]["zeros"] == round(0.7 * summary["total"]["params"])
    assert len({round(r["sparsity"], 3) for r in summary["layers"].values()}) > 1


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_pattern_along_input_axis(gpt, ids, method):
    pruned = prune(gpt, method=method, pattern="2:4", calibration=ids)
    for path, layer in select_layers(pruned, types=("Dense", "EinsumDense")):
        w = kernel_matrix(layer)
        counts = (w != 0).reshape(w.shape[0] // 4, 4, -1).sum(axis=1)
        assert (counts == 2).all(), path


def test_calibration_generator_is_read_once(gpt, ids):
    from_list = prune(gpt, method="wanda", calibration=[ids[:2], ids[2:]])
    from_generator = prune(gpt, method="wanda", calibration=(b for b in (ids[:2], ids[2:])))
    for a, b in zip(from_list.get_weights(), from_generator.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_one_shot_layers_see_pruned_inputs(gpt, ids):
    """Wanda on block 1 must use inputs from the already pruned block 0."""
    from tfcompress.core.calibration import capture_inputs
    from tfcompress.prune.masks import unstructured_mask
    from tfcompress.prune.scores import wanda_scores

    cfg = PruneConfig(method="wanda", include=["block0_mlp_in", "block0_mlp_out",
                                               "block1_mlp_in"])
    pruned = prune(gpt, cfg, calibration=ids)
    layer = pruned.get_layer("block1_mlp_in")
    x = capture_inputs(pruned, [layer], ids)["block1_mlp_in"]
    dense_w = kernel_matrix(gpt.get_layer("block1_mlp_in"))
    expected = unstructured_mask(wanda_scores(dense_w, x), 0.5, per_output=True)
    np.testing.assert_array_equal(kernel_matrix(layer) != 0, expected == 1)


def test_taylor_one_shot(gpt, ids):
    targets = np.roll(ids, -1, axis=1)
    pruned = prune(gpt, method="taylor", sparsity=0.4, calibration=[(ids, targets)])
    assert sparsity_summary(pruned)["total"]["sparsity"] == pytest.approx(0.4, abs=1e-3)
    with pytest.raises(TfcompressError, match="must be \\(inputs, targets"):
        prune(gpt, method="taylor", calibration=[ids])


def test_schedule_gives_expected_sparsity_and_zeros_stay(gpt, ids, tmp_path):
    from tensorflow_model_optimization.sparsity.keras import PolynomialDecay

    schedule = PolynomialDecay(0.2, 0.8, begin_step=0, end_step=8, frequency=1)
    pruned = compiled(prune(gpt, PruneConfig(schedule=schedule, include="block")))
    assert sparsity_summary(pruned)["total"]["zeros"] == 0
    y = np.roll(ids, -1, axis=1)
    pruned.fit(ids, y, batch_size=1, epochs=1, verbose=0,
               callbacks=[UpdatePruning(log_dir=str(tmp_path / "tb"))])  # 4 steps: 0..3
    expected = float(schedule(3)[1])
    for path, row in sparsity_summary(pruned)["layers"].items():
        assert row["zeros"] == round(expected * row["params"]), path
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_zeros_stay_zero_after_fit(gpt, ids):
    pruned = compiled(prune(gpt, method="wanda", calibration=ids))
    before = kernels(pruned)
    pruned.fit(ids, np.roll(ids, -1, axis=1), batch_size=2, epochs=2, verbose=0,
               callbacks=[UpdatePruning()])
    after = kernels(pruned)
    for path in before:
        zeros = before[path] == 0
        assert (after[path][zeros] == 0).all(), path
        assert not np.allclose(after[path][~zeros], before[path][~zeros]), path


def test_strip_round_trips_through_keras_file(gpt, ids, tmp_path):
    plain = strip_pruning(prune(gpt, sparsity=0.6))
    assert not hasattr(plain, "_tfcompress_pruning")
    assert len(plain.weights) == len(gpt.weights)
    plain.save(tmp_path / "pruned.keras")
    loaded = keras.models.load_model(tmp_path / "pruned.keras")
    np.testing.assert_array_equal(loaded(ids).numpy(), plain(ids).numpy())
    assert sparsity_summary(loaded)["total"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    with pytest.raises(TfcompressError, match="has no pruning masks"):
        compiled(loaded).fit(ids, ids, epochs=1, verbose=0, callbacks=[UpdatePruning()])


def test_structured_neurons_zero_units_keep_outputs(gpt, ids):
    model = keras.models.clone_model(gpt)
    model.set_weights(gpt.get_weights())
    dead = [1, 5, 9, 30, 77, 100]  # of 128 hidden units
    for i in range(2):
        layer = model.get_layer(f"block{i}_mlp_out")
        w = layer.kernel.numpy()
        w[dead] = 0.0
        layer.kernel.assign(w)
    small = prune(model, pattern="neurons", sparsity=len(dead) / 128)
    assert small.get_layer("block0_mlp_in").units == 128 - len(dead)
    assert small.count_params() < model.count_params()
    np.testing.assert_allclose(small(ids).numpy(), model(ids).numpy(), atol=1e-5)


def test_structured_heads_zero_heads_keep_outputs(gpt, ids):
    model = keras.models.clone_model(gpt)
    model.set_weights(gpt.get_weights())
    out = model.get_layer("block1_attn")._output_dense
    w = out.kernel.numpy()
    w[0] = 0.0  # head 0 of 2 contributes nothing
    out.kernel.assign(w)
    small = prune(model, PruneConfig(pattern="heads", sparsity=0.5, include="block1"))
    assert small.get_layer("block1_attn").num_heads == 1
    assert small.get_layer("block0_attn").num_heads == 2
    np.testing.assert_allclose(small(ids).numpy(), model(ids).numpy(), atol=1e-5)
    wanda = prune(model, method="wanda", pattern="neurons", sparsity=0.25, calibration=ids)
    assert wanda.get_layer("block1_mlp_in").units == 96


def test_kerashub_gpt2_backbone_prunes_and_runs(tiny_gpt2):
    backbone, batch = tiny_gpt2()
    for method in ("magnitude", "wanda"):
        pruned = prune(backbone, method=method, calibration=batch, exclude="embedding")
        rows = sparsity_summary(pruned)["layers"]
        assert len(rows) == 6 and all(r["sparsity"] == 0.5 for r in rows.values())
        assert np.isfinite(pruned(batch).numpy()).all()


def test_bad_input_is_rejected_before_work(gpt, ids):
    with pytest.raises(TfcompressError, match="no layer matched"):
        prune(gpt, include="nothing_like_this")
    with pytest.raises(TfcompressError, match=(
            r"calibration must be token ids of shape \(batch, seq_len\), got shape \(16,\)")):
        prune(gpt, method="wanda", calibration=ids[0])
    with pytest.raises(TfcompressError, match="calibration is required"):
        prune(gpt, method="sparsegpt")
    with pytest.raises(TfcompressError, match="config must be a config of a prune method"):
        prune(gpt, {"sparsity": 0.5})
    with pytest.raises(TfcompressError, match="pattern='neurons' found no"):
        prune(gpt, pattern="neurons", include="attn")
    odd = build_gpt("test-tiny", vocab_size=64, seq_len=16, d_model=36, n_heads=3)
    with pytest.raises(TfcompressError, match="divisible by 8"):
        prune(odd, pattern="2:8")


def test_old_data_name_warns_and_gives_the_same_model(gpt, ids):
    with pytest.warns(FutureWarning, match="data= is deprecated.*use calibration="):
        old = prune(gpt, method="wanda", data=ids, verbose=0)
    new = prune(gpt, method="wanda", calibration=ids, verbose=0)
    for a, b in zip(old.get_weights(), new.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TfcompressError, match="give calibration only"):
        prune(gpt, method="wanda", data=ids, calibration=ids)


def test_keep_zeros_holds_a_reloaded_models_zeros_through_fit(gpt, ids, tmp_path):
    strip_pruning(prune(gpt, sparsity=0.5, verbose=0)).save(tmp_path / "p.keras")
    again = compiled(keras.models.load_model(tmp_path / "p.keras"))
    before = kernels(again)
    assert keep_zeros(again) and not keep_zeros(build_gpt("test-tiny", vocab_size=64))
    again.fit(ids, np.roll(ids, -1, axis=1), batch_size=2, epochs=1, verbose=0,
              callbacks=[UpdatePruning()])
    after = kernels(strip_pruning(again))
    for path, w in before.items():
        assert (after[path][w == 0] == 0).all(), path
        assert not np.allclose(after[path][w != 0], w[w != 0]), path


class _FloatMasks(keras.layers.Layer):
    """The mask holder of files saved before masks were bool: float32 0/1."""

    def __init__(self, masks):
        super().__init__()
        self.masks = [self.add_weight(shape=m.shape, initializer="ones", trainable=False,
                                      name=m.name) for m in masks]
        for var, mask in zip(self.masks, masks, strict=True):
            var.assign(mask.numpy().astype("float32"))


def test_float_masks_saved_before_load_as_bool(gpt, ids, tmp_path):
    from tfcompress.prune.training import MASKS_ATTR

    pruned = prune(gpt, sparsity=0.5, verbose=0)
    masks = list(pruning_state(pruned).masks.values())
    want = [m.numpy() for m in masks]
    old = _FloatMasks(masks)
    object.__setattr__(pruned, MASKS_ATTR, old)  # written as an earlier version wrote them
    pruned.save(tmp_path / "old.keras")
    loaded = keras.models.load_model(tmp_path / "old.keras")
    got = list(pruning_state(loaded).masks.values())
    assert [m.dtype for m in got] == ["bool"] * len(want)
    assert all(np.array_equal(m.numpy(), w) for m, w in zip(got, want, strict=True))
    assert not all(w.all() for w in want)  # masks with zeros, not the all-ones default


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "taylor"])
def test_verbose_0_prints_nothing_and_verbose_1_shows_progress(gpt, ids, method, capsys):
    prune(gpt, method=method, calibration=(ids, ids) if method == "taylor" else ids, verbose=0)
    assert capsys.readouterr().out == ""
    prune(gpt, method=method, calibration=(ids, ids) if method == "taylor" else ids, verbose=1)
    assert "/" in capsys.readouterr().out  # the progress bar's "k/n"
