"""The command line (exit codes, one-line errors, fast --help) and the API's one set of names."""

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress.cli import AUXILIARY_INPUTS, EXPORT_MODES, LLM_MODES, main
from tfcompress.data import bundled_corpus
from tfcompress.models import build_gpt, gpt_param_count, preset


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    build_gpt("test-tiny").save(root / "m.keras")
    (root / "text.txt").write_text(bundled_corpus("austen")["test"][:20_000])
    return root


def test_help_parses_before_tensorflow_loads():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "tfcompress", "run", "--help"],
                         capture_output=True, text=True, check=True)
    assert "stages: distill, prune, finetune, quantize, factorize, evaluate, export" in out.stdout
    assert not re.search(r"\| +(tensorflow|keras)$", out.stderr, re.MULTILINE)


def test_export_modes_in_help_are_the_registry():
    assert sorted(EXPORT_MODES) == sorted(tfcompress.export.MODES)
    assert LLM_MODES == tfcompress.export.modes.LLM_MODES
    assert AUXILIARY_INPUTS == tfcompress.core.signature.AUXILIARY_INPUTS


def test_evaluate_takes_data_and_tokenizer(saved, capsys):
    assert main(["evaluate", str(saved / "m.keras"), "--data", str(saved / "text.txt"),
                 "--tokenizer", "byte", "--windows", "4", "--batch-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quality"]["tokens"] == 4 * 32  # windows as long as its 32 positions
    assert out["params"] == gpt_param_count(preset("test-tiny"))


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "missing.keras"], "model: 'missing.keras' does not exist"),
    (["evaluate", "{m}"], "has no tokenizer.json beside it; give --tokenizer"),
    (["evaluate", "{m}", "--tokenizer", "byte", "--seq-len", "64"],
     "seq_len: the model has 32 positions, got 64"),
    (["evaluate", "{m}", "--tokenizer", "byte", "--data", "nowhere.txt"],
     "--data: 'nowhere.txt' is not 'austen'"),
    (["run", "{bad}"], "unknown stage 'bake'"),
    (["run", "missing.yaml"], "recipe file 'missing.yaml' does not exist"),
])
def test_user_errors_print_one_message_and_exit_2(saved, capsys, argv, message):
    (saved / "bad.yaml").write_text("model: {keras: nope.keras}\nstages: [bake]\n"
                                    "data: {corpus: austen}\noutput: x\n")
    argv = [a.format(m=saved / "m.keras", bad=saved / "bad.yaml") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfcompress: error: ") and message in err and "Traceback" not in err


def test_bad_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "m.keras", "--mode", "int3"])
    assert exit_.value.code == 2 and "invalid choice: 'int3'" in capsys.readouterr().err


def test_export_llm_then_generate_streams_the_bundles_text(saved, tmp_path, capsys):
    from tfcompress.export import LLMRunner

    out = tmp_path / "bundle"
    assert main(["export", str(saved / "m.keras"), "--llm", "--mode", "float32",
                 "--tokenizer", "byte", "--data", str(saved / "text.txt"), "--windows", "2",
                 "--prefill-lengths", "8", "--cache-length", "32", "--output", str(out)]) == 0
    printed = capsys.readouterr().out  # progress lines, then the result
    result = json.loads(printed[printed.index("\n{") + 1:])
    assert result["litertlm"] == str(out / "model.litertlm") and result["agreement"] == 1.0
    assert result["verified_on"] == "the given 32 token ids"  # a held-out window of --data
    assert {p.name for p in out.iterdir()} >= {"model.tflite", "tokenizer.json", "llm.json",
                                               "model.litertlm"}
    assert main(["generate", str(out), "It is a truth", "--tokens", "12"]) == 0
    expected = "".join(LLMRunner(out).generate("It is a truth", max_new_tokens=12))
    assert capsys.readouterr().out == expected + "\n" and expected


@pytest.mark.parametrize("argv, message", [
    (["generate", "{m}", "hello"], "bundle must be a folder written by export_llm"),
    (["export", "{m}", "--llm", "--mode", "int8"],
     "--mode: a bundle (--llm) takes float32, float16, dynamic_int8, int4, int16x8, "
     "int8_static, got 'int8'"),
    (["export", "{m}", "--llm", "--mode", "float32", "--tokenizer", "byte", "--cache-length",
      "32", "--prefill-lengths", "8", "--rotate"],
     "rotate=True: rotate supports llama"),
])
def test_llm_commands_refuse_bad_input_with_one_message(saved, capsys, argv, message):
    assert main([a.format(m=saved / "m.keras") for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfcompress: error: ") and message in err


def test_inspect_lists_what_each_method_touches(saved, capsys):
    from tfcompress.quantize import quantize

    model = quantize(keras.models.load_model(saved / "m.keras"), bits=4, granularity="group",
                     group_size=16, include="mlp_in", verbose=0)
    model.save(saved / "q.keras")
    assert main(["inspect", str(saved / "q.keras")]) == 0
    out = capsys.readouterr().out
    assert ("| block0_mlp_in | QuantizedDense | 32x128 | 4,096 | – | 4 | prune, quantize, "
            "factorize |") in out
    assert "| token_embedding | Embedding | 256x32 | 8,192 | 0.0% | 32 | prune, quantize |" in out


# --- one consistent API ---


def test_verbs_are_their_packages_and_old_aliases_warn():
    import inspect

    for name in ("prune", "quantize", "evaluate"):
        package = getattr(tfcompress, name)
        assert package.__name__ == f"tfcompress.{name}" and callable(package)
        assert inspect.signature(package) == inspect.signature(getattr(package, name))
    for old, new in (("pruning", "prune"), ("quantization", "quantize"),
                     ("evaluation", "evaluate")):
        with pytest.warns(FutureWarning, match=f"use tfcompress.{new}"):
            assert getattr(tfcompress, old) is getattr(tfcompress, new)
    for name in tfcompress.__all__:
        assert getattr(tfcompress, name) is not None


def test_every_verb_takes_calibration_and_an_int_verbose():
    import inspect

    for verb in (tfcompress.prune, tfcompress.quantize, tfcompress.factorize):
        params = inspect.signature(verb).parameters
        assert list(params)[2] == "calibration" and params["verbose"].default == 1


def test_error_hints_name_things_that_import():
    import importlib

    hints = set()
    for path in Path(tfcompress.__file__).parent.rglob("*.py"):
        hints |= set(re.findall(r'_hint="(tfcompress\.[\w.]+)', path.read_text()))
    assert len(hints) >= 5
    for hint in hints:
        module, _, name = hint.rpartition(".")
        assert hasattr(importlib.import_module(module), name), hint


def test_factorize_merges_a_config_with_overrides():
    from tfcompress.lowrank import SVDConfig

    base = SVDConfig(target_ratio=0.5, include="mlp")
    merged = base.with_overrides(rank=4)
    assert (merged.rank, merged.target_ratio, merged.include) == (4, None, "mlp")
    model = tfcompress.factorize(build_gpt("test-tiny"), base, rank=4, verbose=0)
    assert {p.rank for p in model.factorization if p.factorized} == {4}


def test_one_generate_and_the_old_one_warns():
    from tfcompress.models import generate as old_generate

    logits = np.eye(5)[[1, 2, 3, 4, 0]]  # token t is followed by t + 1

    def predict(x):
        return logits[x]

    assert tfcompress.generate(predict, [0], 6, stop_ids=[3]).tolist() == [0, 1, 2, 3]
    assert tfcompress.generate(predict, [4], 2, seq_len=3).tolist() == [4, 0, 1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert old_generate(predict, [0], 3) == [1, 2, 3]
    assert "use tfcompress.generate" in str(caught[0].message)
