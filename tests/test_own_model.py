"""A user's own model (examples/own_model: functional LM with Keras's automatic layer names,
its Hugging Face BPE tokenizer.json) through the CLI, recipes and verbs (issue 26)."""

import json
import runpy
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress.cli import main
from tfcompress.data import bundled_corpus
from tfcompress.errors import TfcompressError
from tfcompress.recipes import run_recipe

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_model"
build_lm = runpy.run_path(str(EXAMPLE / "make_model.py"))["build_lm"]
VOCAB = json.loads((EXAMPLE / "tokenizer.json").read_text())["model"]["vocab"].__len__()


def save_user_model(folder: Path, seed: int = 0) -> Path:
    keras.backend.clear_session()  # automatic layer names from "dense" on, whatever ran before
    keras.utils.set_random_seed(seed)
    path = folder / "my_lm.keras"
    build_lm(VOCAB, width=16).save(path)
    return path


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's folder: my_lm.keras, their tokenizer.json beside it, a text file."""
    root = tmp_path_factory.mktemp("own")
    save_user_model(root)
    shutil.copyfile(EXAMPLE / "tokenizer.json", root / "tokenizer.json")
    (root / "text.txt").write_text(bundled_corpus("austen")["test"][:12_000])
    return root


def recipe_for(root, stages, out, **data):
    return {"model": {"keras": str(root / "my_lm.keras"), "name": "mine"},
            "data": {"text": str(root / "text.txt"), "seq_len": 16, "batch_size": 4,
                     "eval_windows": 4, "calibration_windows": 4, **data},
            "samples": {"tokens": 2}, "stages": stages, "output": str(out)}


# 1 -------------------------------------------------------------------------------------------
def test_a_retrained_model_file_runs_again_and_fresh_starts_over(user, tmp_path, capsys):
    root = tmp_path / "user"
    shutil.copytree(user, root)
    recipe = recipe_for(root, ["evaluate"], tmp_path / "run")
    first = run_recipe(recipe)
    assert [t["resumed"] for t in run_recipe(recipe).timings] == [True, True]
    save_user_model(root, seed=1)  # retrained in place: same path, other bytes
    capsys.readouterr()
    again = run_recipe(recipe)
    out = capsys.readouterr().out
    assert f"input file changed since the last run: {root / 'my_lm.keras'}" in out
    assert "[1/1] evaluate (mine): runs again, an earlier stage ran again" in out
    assert [t["resumed"] for t in again.timings] == [False, False]
    ppl = [r.quality["perplexity"] for r in (first.reports[0], again.reports[0])]
    assert ppl[0] != ppl[1]  # the report measured the new model, not the old record
    fresh = run_recipe(recipe, fresh=True)
    assert [t["resumed"] for t in fresh.timings] == [False, False]
    assert "runs again, --fresh" in capsys.readouterr().out


# 2 -------------------------------------------------------------------------------------------
def test_default_layers_are_each_blocks_attention_and_mlp(user):
    from tfcompress.core.roles import block_kernel_paths
    from tfcompress.models import build_gpt

    model = keras.models.load_model(user / "my_lm.keras")
    kinds = {p: type(la).__name__ for p, la in tfcompress.core.iter_layers(model)}
    paths = block_kernel_paths(model)
    # 2 blocks x (q, k, v, output of the attention + 2 MLP Dense); not the embedding or head
    assert len(paths) == 12 and sum(kinds[p] == "Dense" for p in paths) == 4
    head = model.layers[-1].name
    assert head not in paths and "embedding" not in paths
    gpt = block_kernel_paths(build_gpt("test-tiny"))
    assert all(p.startswith("block") for p in gpt) and len(gpt) == 2 * 6


def test_a_recipe_without_include_prunes_the_blocks_and_a_bad_include_fails_first(
        user, tmp_path):
    run = run_recipe(recipe_for(user, [{"prune": {"method": "wanda", "sparsity": 0.5}}],
                                tmp_path / "run"))
    pruned = run.model("mine-pruned")
    zeros = {la.name: float((np.asarray(la.kernel) == 0).mean()) for la in pruned.layers
             if type(la).__name__ == "Dense"}
    assert zeros[pruned.layers[-1].name] == 0.0  # the head stays dense
    assert sorted(v for k, v in zeros.items() if k != pruned.layers[-1].name) == [0.5] * 4
    bad = recipe_for(user, [{"prune": {"sparsity": 0.5, "include": "dense_9|block"}}],
                     tmp_path / "bad")
    with pytest.raises(TfcompressError, match=r"stages\[0\]\.prune\.include: 'dense_9\|block' "
                       r"matches no layer .* close names: dense, dense_1"):
        run_recipe(bad)
    assert not (tmp_path / "bad" / "stages").exists()  # before the first stage measured


# 3 and 4 ------------------------------------------------------------------------------------
def test_failed_verification_is_one_line_exit_2_no_file_and_the_tokenizer_is_kept(
        user, tmp_path, capsys):
    root = tmp_path / "user"
    shutil.copytree(user, root)
    theirs = (root / "tokenizer.json").read_bytes()  # a Hugging Face BPE file
    out = root / "my_lm.dynamic_int8.tflite"  # the default: beside the model
    argv = ["export", str(root / "my_lm.keras"), "--mode", "dynamic_int8", "--tokenizer",
            "byte", "--data", str(root / "text.txt"), "--seq-len", "16", "--windows", "4"]
    assert main([*argv, "--max-abs-error", "1e-9"]) == 2
    full = capsys.readouterr().err
    err = full.splitlines()[-1]
    assert "Traceback" not in full
    assert err.startswith("tfcompress: error: verification failed: dynamic_int8 export "
                          "disagrees with the Keras model: max |error| ")
    assert not out.exists() and f"{out.name} was not kept" in err
    suggested = err.split("export --max-abs-error ")[1].split()[0]
    assert main([*argv, "--max-abs-error", suggested]) == 0 and out.is_file()
    assert (root / "tokenizer.json").read_bytes() == theirs  # not written over
    assert json.loads((root / "my_lm.dynamic_int8.tokenizer.json").read_text()) == {
        "type": "byte"}


# 5 and 13 ------------------------------------------------------------------------------------
LAYERS = '''
import keras


class Scale(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x
'''


def test_custom_layers_load_with_custom_objects_and_bad_files_say_why(tmp_path, monkeypatch,
                                                                      capsys):
    (tmp_path / "user_layers_26.py").write_text(LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    from user_layers_26 import Scale

    ids = keras.Input((8,), dtype="int32")
    model = keras.Model(ids, keras.layers.Dense(4)(Scale()(keras.layers.Embedding(4, 8)(ids))))
    model.save(tmp_path / "custom.keras")
    keras.saving.get_custom_objects().pop("Scale", None)
    monkeypatch.delitem(__import__("sys").modules, "user_layers_26")
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "custom.keras"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tfcompress: error: model 'custom.keras' uses classes of your own that are not "
        "imported: user_layers_26.Scale. Import their module first (command line: --import "
        "user_layers_26 or --custom-objects user_layers_26:Scale; recipe: "
        "model.custom_objects: [user_layers_26:Scale]; Python: import user_layers_26 before "
        "loading)")
    assert main(["inspect", "custom.keras", "--custom-objects", "user_layers_26:Scale"]) == 0
    assert "| Dense | 8x4 |" in capsys.readouterr().out
    assert main(["inspect", "custom.keras", "--import", "no_such_module_26"]) == 2
    assert "--import: cannot import 'no_such_module_26'" in capsys.readouterr().err
    from tfcompress.core.validation import first_line

    assert first_line("could not be deserialized properly " * 9, 40) == (
        "could not be deserialized properly …")  # was cut mid-word: "... ar"
    data = (tmp_path / "custom.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(TfcompressError, match="'cut.keras' is not a .keras archive: not a zip "
                       "file"):
        tfcompress.core.saving.load_model("cut.keras")
    with pytest.raises(TfcompressError, match=r"model.keras: file .* does not exist"):
        run_recipe({"model": {"keras": "missing.keras"}, "data": {"corpus": "austen"},
                    "stages": ["evaluate"], "output": "x"})


# 10 ------------------------------------------------------------------------------------------
def test_wanda_neurons_leaves_the_users_graph_as_it_was():
    from tfcompress.models import build_gpt
    from tfcompress.prune import prune

    model = build_gpt("test-tiny", vocab_size=64)
    ids = np.random.default_rng(0).integers(0, 64, (4, 16)).astype("int32")
    nodes = [(len(la._inbound_nodes), len(la._outbound_nodes)) for la in model.layers]
    first = prune(model, pattern="neurons", method="wanda", calibration=ids, sparsity=0.25)
    assert [(len(la._inbound_nodes), len(la._outbound_nodes)) for la in model.layers] == nodes
    second = prune(model, pattern="neurons", method="wanda", calibration=ids, sparsity=0.25)
    np.testing.assert_array_equal(np.asarray(first(ids)), np.asarray(second(ids)))


# 13 ------------------------------------------------------------------------------------------
def test_distiller_names_a_token_id_outside_the_vocabulary():
    import tensorflow as tf

    from tfcompress.distill import Distiller
    from tfcompress.models import build_gpt

    teacher = build_gpt("test-tiny", vocab_size=64, n_layers=1)
    ids = np.random.default_rng(0).integers(0, 64, (8, 16)).astype("int32")
    ids[5, 3] = 70  # in the second batch: a dataset is not read before fit
    data = tf.data.Dataset.from_tensor_slices((ids, ids)).batch(4)
    distiller = Distiller(teacher, build_gpt("test-tiny", vocab_size=64, n_layers=1))
    distiller.compile("adam")
    with pytest.raises(TfcompressError, match=r"the training data holds token id 70, but an "
                       r"embedding takes ids in \[0, 64\) \(vocabulary of the student 64, of "
                       r"the teacher 64\)"):
        distiller.fit(data, epochs=1, verbose=0)


# 12 ------------------------------------------------------------------------------------------
def test_prune_tf_keras_takes_a_graph_holding_constant_positions():
    import tensorflow as tf
    import tf_keras as K

    from tfcompress.prune import prune_tf_keras

    K.backend.clear_session()  # the TFOpLambda's automatic name, whatever ran before
    ids = K.Input((8,), dtype="int32")
    x = K.layers.Embedding(32, 8, name="tok")(ids)
    x = K.layers.Add()([x, K.layers.Embedding(8, 8, name="pos")(tf.range(8)[None])])
    x = x + K.layers.MultiHeadAttention(2, 4, name="attn")(x, x, use_causal_mask=True)
    model = K.Model(ids, K.layers.Dense(32, name="head")(x))
    with pytest.raises(TypeError):  # what failed inside prune_tf_keras before
        K.models.clone_model(model)
    pruned, skipped = prune_tf_keras(model, sparsity=0.5)
    assert [la.name for la in pruned.layers if la.name.startswith("prune_low")] == [
        "prune_low_magnitude_tok", "prune_low_magnitude_attn", "prune_low_magnitude_head"]
    assert skipped == {"tf.__operators__.add": "TFOpLambda: no weights, left as is"}
    x = np.random.default_rng(0).integers(0, 32, (2, 8))
    np.testing.assert_array_equal(np.asarray(pruned(x)), np.asarray(model(x)))


# 6, 7, 8 -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_quantized_model_exports_its_mode_natively_and_the_report_means_one_thing(
        tmp_path, capsys):
    import warnings

    from tfcompress.evaluate import param_counts
    from tfcompress.export import ExportSizeWarning, XNNPACKFallbackWarning, export_tflite
    from tfcompress.export.tflite import weight_bytes
    from tfcompress.quantize import quantize

    keras.utils.set_random_seed(0)
    model = build_lm(VOCAB)  # width 32: LiteRT's int4 blocks
    ids = np.random.default_rng(0).integers(0, VOCAB, (8, 16)).astype("int32")
    gptq = quantize(model, method="gptq", bits=4, granularity="group", group_size=32,
                    calibration=ids, verbose=0)
    assert param_counts(gptq) == param_counts(model)  # parameters, not stored values
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = export_tflite(gptq, tmp_path / "gptq.tflite", "int4", seq_len=16,
                              verbose=False, min_agreement=0.0, max_ppl_ratio=1e9)
        assert not [w for w in caught if w.category in (ExportSizeWarning,
                                                        XNNPACKFallbackWarning)]
        export_tflite(gptq, tmp_path / "unpacked.tflite", "float32", seq_len=16, verbose=False)
    # the codes go in as weights LiteRT quantizes itself: half the float model's weights
    # (unpacked in the graph it was 1.15x them, 2.3x the float model's int4 file)
    assert small.bytes < 0.6 * weight_bytes(model)
    big = [str(w.message) for w in caught if w.category is ExportSizeWarning]
    assert len(big) == 1 and f"more than the {weight_bytes(gptq):,} bytes" in big[0]
    assert "(int4, dynamic_int8)" in big[0]
    assert capsys.readouterr().out == ""  # the LiteRT quantizer's bars and lines are gone


@pytest.mark.slow
def test_a_gptq_models_codes_go_into_the_int4_window_file_unchanged(tmp_path):
    from tfcompress.core.layers import iter_layers, kernel_matrix, layer_type
    from tfcompress.export import export_tflite
    from tfcompress.export.llm_int4 import int4_weights
    from tfcompress.quantize import QuantizeConfig, quantize

    keras.utils.set_random_seed(0)
    ids = np.random.default_rng(0).integers(0, VOCAB, (8, 16)).astype("int32")
    gptq = quantize(build_lm(VOCAB), QuantizeConfig.litert_int4("gptq"), calibration=ids,
                    verbose=0)  # LiteRT's int4 grid, as export_llm copies it
    result = export_tflite(gptq, tmp_path / "gptq.tflite", "int4", seq_len=16, verbose=False)
    kinds = {path: layer_type(layer) for path, layer in iter_layers(gptq)}  # QuantizedDense: Dense
    matmuls = {path: kernel_matrix(layer) for path, layer in iter_layers(gptq)
               if kinds[path] in ("Dense", "EinsumDense")}
    assert sorted(result.int4["copied"]) == sorted(matmuls)  # 4 attention + 2 MLP x 2, head
    # the quantized embedding: int8 per row, as export_llm's
    assert [kinds[path] for path in result.int4["rerounded"]] == ["Embedding"]
    in_file = list(int4_weights((tmp_path / "gptq.tflite").read_bytes()).values())
    assert len(in_file) == len(matmuls) == 13
    for path, kernel in matmuls.items():  # GPTQ's codes x scales, bit for bit
        assert any(w.shape == kernel.shape and np.array_equal(w, kernel) for w in in_file), path


@pytest.mark.slow
def test_the_int4_window_file_quantizes_the_embedding_too(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from tfcompress.export import export_tflite

    keras.utils.set_random_seed(0)
    model = build_lm(2048)  # the embedding (and head) hold 84 % of the weights
    # both verify with their modes' default tolerances (export_tflite raises otherwise)
    int4 = export_tflite(model, tmp_path / "int4.tflite", "int4", seq_len=16, verbose=False)
    int8 = export_tflite(model, tmp_path / "int8.tflite", "dynamic_int8", seq_len=16,
                         verbose=False)
    # the table was float32 (GATHER by 2-D ids): 333 kB, 1.6x the int8 file (now 161.6 kB)
    assert int4.bytes < 0.85 * int8.bytes
    assert int4.int4["embedding"] == "int8 per row (EMBEDDING_LOOKUP)"
    assert "GATHER" not in int4.ops
    details = Interpreter(model_path=int4.path).get_tensor_details()
    tables = [d["dtype"] for d in details if tuple(d["shape"]) == (2048, 32)]
    assert tables and np.float32 not in tables  # the table and the head's matmul


def test_speed_up_compares_latencies_within_one_runtime():
    from tfcompress.evaluate import Report, compare, ratios

    def report(name, kind, ms):
        return Report(name, kind, bytes=100, latency={"1": {"median_ms": ms}})

    keras_model, tflite, smaller = report("k", "keras", 30.0), report("t", "tflite", 2.0), \
        report("s", "tflite", 1.0)
    assert ratios(tflite, keras_model)["speedup"] is None  # was 15x: the runtimes' gap
    rows = compare([keras_model, tflite, smaller]).splitlines()
    assert "speed-up (same runtime)" in rows[0]
    assert "| 1.00 |" in rows[3] and "| 2.00 |" in rows[4]  # against the first .tflite


def test_progress_in_a_log_is_plain_lines(capsys):
    from tfcompress.core.progress import LogProgress, progress_bar

    bar = progress_bar(3, unit_name="block")  # pytest captures stdout: not a terminal
    assert isinstance(bar, LogProgress)
    for _ in range(3):
        bar.add(1)
    out = capsys.readouterr().out
    assert out.startswith("block 3/3 (") and "\x1b" not in out and "\r" not in out


# 9 -------------------------------------------------------------------------------------------
def test_setup_py_shim_answers_from_pyproject():
    import subprocess
    import sys

    root = EXAMPLE.parents[1]
    out = subprocess.run([sys.executable, "setup.py", "--name", "--version"], cwd=root,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["tfcompress", tfcompress.__version__]


# the shipped example, as the README runs it -------------------------------------------------
@pytest.mark.slow
def test_the_own_model_example_runs_as_the_readme_says(tmp_path, monkeypatch, capsys):
    shutil.copytree(EXAMPLE, tmp_path / "examples" / "own_model")
    monkeypatch.chdir(tmp_path)
    make_model = runpy.run_path("examples/own_model/make_model.py")["main"]
    make_model(["--steps", "5"])  # README: python examples/own_model/make_model.py
    assert main(["run", "examples/own_model/recipe.yaml", "--quick"]) == 0
    out = tmp_path / "runs" / "own_model" / "compressed-quick"
    report = (out / "report.md").read_text()
    for row in ("| my_lm | keras |", "| my_lm-pruned | keras |",
                "| my_lm-pruned-quantized | keras |"):
        assert row in report
    shipped = sorted(p.name for p in (out / "exports").glob("*.tflite"))
    assert shipped and shipped[0].startswith("my_lm-pruned-quantized.")
    assert json.loads((out / "exports" / "tokenizer.json").read_text()) == json.loads(
        (EXAMPLE / "tokenizer.json").read_text())  # the user's own BPE, as it was
    pruned = keras.models.load_model(out / "stages" / "01-prune" / "model.keras")
    head = pruned.layers[-1]
    assert (np.asarray(head.kernel) != 0).all()  # the head is no block: kept dense
