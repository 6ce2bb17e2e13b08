"""Every ``.keras`` file the library writes loads with ``keras.saving.load_model`` in a fresh
process after ``import tfcompress``; compressed layers are registered classes; the class-keyed
layer registry takes a user's layer; files written before issue #27 still load."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import tfcompress  # noqa: F401  (sets the backend)
from tests import saving_models as sm
from tfcompress.core.layers import iter_layers, kernel_of, register_layer, select_layers
from tfcompress.core.replace import CompressedLayer, compressed_class
from tfcompress.distill import Distiller
from tfcompress.errors import TfcompressError
from tfcompress.lowrank import CPConfig, SVDConfig, factorize
from tfcompress.prune import MagnitudeConfig, prune
from tfcompress.prune.training import pruning_state, strip_pruning
from tfcompress.quantize import GPTQConfig, RTNConfig, is_quantized, qat, quantize, strip_qat

OLD = Path(__file__).parent / "data" / "old_saving"
CALIBRATION = sm.ids(16, seed=1)
METHODS = {
    "pruned": lambda m: prune(m, MagnitudeConfig(sparsity=0.5), verbose=0),
    "pruned_stripped": lambda m: strip_pruning(prune(m, MagnitudeConfig(sparsity=0.5),
                                                     verbose=0)),
    "int8": lambda m: quantize(m, RTNConfig(bits=8), verbose=0),
    "int4_g8": lambda m: quantize(m, RTNConfig(bits=4, granularity="group", group_size=8),
                                  verbose=0),
    "gptq": lambda m: quantize(m, GPTQConfig(bits=4), calibration=CALIBRATION, verbose=0),
    "qat": lambda m: qat(m, RTNConfig(bits=4)),
    "svd": lambda m: factorize(m, SVDConfig(rank=4), verbose=0),
    "cp": lambda m: factorize(m, CPConfig(rank=4), verbose=0),
}
LOADER = """
import json, sys
import keras, numpy as np
import tfcompress
import tests.saving_models  # the user's own classes, as a user imports theirs
out, x = sys.argv[1], np.load(sys.argv[1] + "/x.npy")
errors = {}
for name in json.loads(open(out + "/names.json").read()):
    model = keras.saving.load_model(f"{out}/{name}.keras")
    expected = np.load(f"{out}/{name}.npy")
    errors[name] = [type(model).__name__, float(np.abs(np.asarray(model(x)) - expected).max())]
print(json.dumps(errors))
"""


def _distilled(tmp_path):
    """A student (Sequential) after two steps of distillation from a functional teacher."""
    distiller = Distiller(sm.functional(1), sm.sequential(2))
    distiller.compile(keras.optimizers.SGD(0.1))
    x = sm.ids(8)
    distiller.fit(x, np.roll(x, -1, axis=1), epochs=2, batch_size=8, verbose=0)
    return distiller.student


def test_every_kind_on_every_model_loads_in_one_fresh_process(tmp_path):
    x = sm.ids(4, seed=2)
    written = {}
    for kind in ("functional", "sequential", "subclassed"):
        for method, make in METHODS.items():
            written[f"{kind}_{method}"] = make(getattr(sm, kind)())
    written["distilled_student"] = _distilled(tmp_path)
    for name, model in written.items():
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}.npy", np.asarray(model(x)))
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "names.json").write_text(json.dumps(sorted(written)))
    root = Path(__file__).parent.parent
    run = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path)], cwd=root, text=True,
                         capture_output=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(loaded) == sorted(written)
    for name, (cls, error) in loaded.items():
        assert error <= 1e-6, (name, error)
        assert cls == type(written[name]).__name__, name
    # a graph model names its compressed layers in its own config: no model-level record
    # unless a compressed layer sits inside another layer (MultiHeadAttention's projections)
    seq = _config(tmp_path / "sequential_int4_g8.keras")
    assert (seq["class_name"], seq.get("registered_name")) == ("Sequential", None)
    assert [la["registered_name"] for la in seq["config"]["layers"][1:]] == [
        "tfcompress>QuantizedEmbedding", "tfcompress>QuantizedDense", "tfcompress>QuantizedDense"]
    fun = _config(tmp_path / "functional_int4_g8.keras")
    assert fun["registered_name"] == "tfcompress>CompressedModel"
    assert sorted(fun["config"]["state"]["layers"]) == [
        "attn/attention_output", "attn/key", "attn/query", "attn/value"]
    top = {la["config"]["name"]: la["registered_name"]
           for la in fun["config"]["model"]["config"]["layers"]}
    assert (top["tok"], top["mine"], top["attn"]) == (
        "tfcompress>QuantizedEmbedding", "tfcompress>QuantizedMyDense", None)


def _config(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def test_compressed_layers_are_registered_classes_with_their_settings_in_the_config():
    q = quantize(sm.sequential(), RTNConfig(bits=4, granularity="group", group_size=8),
                 verbose=0)
    up = q.get_layer("up")
    assert type(up).__name__ == "QuantizedDense" and isinstance(up, keras.layers.Dense)
    layout = up.get_config()["quantization_layout"]
    assert (layout["bits"], layout["group_rows"], layout["matrix_shape"]) == (4, 8, [16, 32])
    # variables in a fixed order: codes (two 4-bit codes a byte), scale, offset, levels, bias
    assert [(v.name, tuple(v.shape)) for v in up.weights] == [
        ("bias", (32,)), ("codes", (8, 32)), ("scale", (2, 32)), ("offset", (2, 32)),
        ("levels", (1, 16))]
    again = keras.layers.deserialize(keras.layers.serialize(up))
    assert type(again) is type(up) and again.get_config() == up.get_config()
    t = qat(sm.sequential(), RTNConfig(bits=4)).get_layer("head")
    assert type(t).__name__ == "QATDense" and t.get_config()["qat"] == {"bits": 4,
                                                                         "group": None}


class _NamedOtherwise(keras.layers.Layer):
    """A user's layer whose weight ``w`` is made under another name (``weight``)."""

    def build(self, input_shape):
        self.w = self.add_weight(name="weight", shape=(input_shape[-1], 4))

    def call(self, x):
        return keras.ops.matmul(x, self.w)


def test_a_quantized_layer_builds_no_float_weight(monkeypatch):
    """Loading builds only the stored variables (the float kernel would be float32 memory
    and an initializer run per layer); a weight the float build names otherwise than the
    registry is made and dropped."""
    up = quantize(sm.sequential(), RTNConfig(bits=4, granularity="group", group_size=8),
                  verbose=0).get_layer("up")
    made = []
    add_weight = keras.layers.Layer.add_weight

    def recording(self, *args, **kwargs):
        made.append(kwargs.get("name"))
        return add_weight(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "add_weight", recording)
    again = keras.layers.deserialize(keras.layers.serialize(up))  # built from its config
    assert made == ["bias", "codes", "scale", "offset", "levels"]
    assert [v.name for v in again.weights] == made and "kernel" not in again.__dict__
    monkeypatch.undo()
    register_layer(_NamedOtherwise, weight="w", methods=("quantize",))
    model = keras.Sequential([keras.Input((8,)), _NamedOtherwise(name="odd")])
    q = quantize(model, RTNConfig(bits=8), verbose=0)
    assert [v.name for v in q.get_layer("odd").weights] == ["codes", "scale", "offset",
                                                            "levels"]
    x = np.random.default_rng(0).normal(size=(2, 8)).astype("float32")
    w = np.asarray(model.get_layer("odd").w)
    np.testing.assert_allclose(np.asarray(q(x)), x @ w, atol=8 * np.abs(w).max() / 127)


def test_quantized_and_qat_layers_share_one_compressed_layer_base():
    up = quantize(sm.sequential(), RTNConfig(bits=8), verbose=0).get_layer("up")
    t = qat(sm.sequential(), RTNConfig(bits=4, granularity="group", group_size=8)).get_layer(
        "up")
    for layer, key in ((up, "quantization_layout"), (t, "qat")):
        assert isinstance(layer, CompressedLayer) and layer.config_key == key
        assert layer.float_config() == {k: v for k, v in layer.get_config().items()
                                        if k != key}
        assert layer.float_config()["units"] == 32
    assert t.tfc_settings == {"bits": 4, "group": 8} and up.tfc_settings["bits"] == 8
    cls = type(t)
    with pytest.raises(TfcompressError, match="QATDense needs its settings 'qat' in its "
                                              r"config, got \['units'\]"):
        cls(units=3)
    with pytest.raises(TfcompressError, match="mixin must be a CompressedLayer subclass"):
        compressed_class(object, keras.layers.Dense)


def test_strip_qat_gives_back_plain_layers_on_the_grid():
    model = qat(sm.functional(), RTNConfig(bits=4))
    x = sm.ids(2)
    before = np.asarray(model(x))
    plain = strip_qat(model)
    assert not any(getattr(la, "compression", None) for _, la in iter_layers(plain))
    assert type(plain.get_layer("up")) is keras.layers.Dense
    np.testing.assert_allclose(np.asarray(plain(x)), before, atol=1e-5)
    w = np.asarray(kernel_of(plain.get_layer("up")))
    assert all(len(np.unique(w[:, j])) <= 16 for j in range(w.shape[1]))  # 4 bits a channel


def test_a_users_layer_joins_the_registry():
    model = sm.functional()
    chosen = dict(select_layers(model, types=("Dense",), method="quantize"))
    assert "mine" in chosen and kernel_of(chosen["mine"]) is chosen["mine"].w
    assert "mine" not in dict(select_layers(model, types=("Dense",), method="factorize"))
    q = quantize(model, RTNConfig(bits=8), verbose=0)
    mine = q.get_layer("mine")
    assert is_quantized(mine) and type(mine).__name__ == "QuantizedMyDense"
    w = np.asarray(model.get_layer("mine").w)
    np.testing.assert_allclose(np.asarray(mine.w), w, atol=np.abs(w).max() / 127)
    pruned = prune(model, MagnitudeConfig(sparsity=0.5), verbose=0)
    assert "mine" in pruning_state(pruned).layers
    assert np.mean(np.asarray(pruned.get_layer("mine").w) == 0) == 0.5


def test_register_layer_refuses_bad_arguments_naming_them():
    with pytest.raises(TfcompressError, match="like must be one of .* got 'Linear'"):
        register_layer(sm.MyDense, weight="w", like="Linear")
    with pytest.raises(TfcompressError, match=r"methods must be among .* got \['distill'\]"):
        register_layer(sm.MyDense, weight="w", methods=("distill",))
    with pytest.raises(TfcompressError, match="takes a layer class"):
        register_layer("MyDense")


@pytest.mark.parametrize("name", ["int4", "qat", "pruned", "svd"])
def test_files_written_before_issue_27_still_load(name, tmp_path):
    expected = np.load(OLD / "expected.npz")
    model = keras.saving.load_model(OLD / f"{name}.keras")
    np.testing.assert_allclose(np.asarray(model(expected["x"])), expected[name], atol=1e-6)
    model.save(tmp_path / "again.keras")  # re-saved in the form it was read
    again = keras.saving.load_model(tmp_path / "again.keras")
    np.testing.assert_allclose(np.asarray(again(expected["x"])), expected[name], atol=1e-6)
