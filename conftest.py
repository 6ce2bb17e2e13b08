"""The namespace the docstring examples of `tfcompress/` run in (``make test``'s doctest run,
``pytest --doctest-modules tfcompress``): numpy, keras, every public name of the subpackages,
and tiny stand-ins for what an example names (a GPT ``model`` / ``teacher``, a shallower
``student``, token ``windows`` / ``ids`` and ``batches`` of them, a byte ``tokenizer``), so
examples run as written in seconds, in a temporary folder. Examples that cannot run here are
listed in `NOT_RUNNABLE` with why."""

import functools
import importlib

import numpy as np
import pytest

# the examples of a module or object (name without tfcompress.) -> why they do not run here
# (skipped with that reason)
NOT_RUNNABLE: dict[str, str] = {
    "core.calibration": "a sketch: layers is the caller's own object",
    "core.distribute.worker_safe_fit": "a sketch: data is the caller's own object",
    "core.generation.generate": "a sketch: runner is the caller's own object",
    "core.progress": "a sketch: blocks is the caller's own object",
    "core.saving": "a sketch: restore_masks is the caller's own object",
    "core.signature": "a sketch: gpt2_causal_lm is the caller's own object",
    "core.signature.input_view": "a sketch: gpt2_causal_lm is the caller's own object",
    "core.signature.signature": "a sketch: gpt2_causal_lm is the caller's own object",
    "core.stats.InputStats.take_hessian": "a sketch: w is the caller's own object",
    "distill": "a sketch: train is the caller's own object",
    "distill.cache": "a sketch: corpus is the caller's own object",
    "distill.cache.cache_teacher": "a sketch: batches is the caller's own object",
    "distill.callbacks": "a sketch: valid_batches is the caller's own object",
    "distill.distiller": "a sketch: corpus is the caller's own object",
    "distill.distiller.Distiller": "a sketch: train is the caller's own object",
    "distill.guard": "a sketch: holdout is the caller's own object",
    "distill.guard.KDGuard": "a sketch: valid_batches is the caller's own object",
    "distill.guard.holdout_loss": "a sketch: x is the caller's own object",
    "distill.soft_targets": "a sketch: train is the caller's own object",
    "evaluate.plots": "a sketch: reports is the caller's own object",
    "evaluate.plots.plot_history": "a sketch: data is the caller's own object",
    "evaluate.plots.plot_quality_vs_size": "a sketch: reports is the caller's own object",
    "evaluate.report": "a sketch: test_batches is the caller's own object",
    "export.diagnose": "reads a bundle or .tflite file exported beforehand",
    "export.generate": "reads a bundle or .tflite file exported beforehand",
    "export.litertlm": "reads a bundle or .tflite file exported beforehand",
    "export.llm": "its cache of 1,024 positions needs a model with that many",
    "export.llm.verification_ids": "a sketch: runner is the caller's own object",
    "export.llm.reference_logits": "a sketch: gptq_model is the caller's own object",
    "export.llm_budget": "a sketch: dec is the caller's own object",
    "export.llm_graph": "a sketch: weights is the caller's own object",
    "export.llm_graph.CacheStep": "a sketch: step is the caller's own object",
    "export.llm_int4": "a sketch: float_flatbuffer is the caller's own object",
    "export.llm_integer": "a sketch: model is the caller's own object",
    "export.llm_integer.calibration_samples": "a sketch: dec is the caller's own object",
    "export.llm_integer.sink_prefix": "a sketch: dec is the caller's own object",
    "export.llm_integer.twin_tensors": "a sketch: flatbuffer is the caller's own object",
    "export.llm_int4.int4_weights": "a sketch: Path is the caller's own object",
    "export.llm_int4.litert_recovers": "a sketch: w is the caller's own object",
    "export.llm_int4.quantize_keras_int4": "a sketch: float_flatbuffer is the caller's own object",
    "export.llm_runner": "reads a bundle or .tflite file exported beforehand",
    "export.llm_runner.measure_speed": "reads a bundle or .tflite file exported beforehand",
    "export.llm_tied": "a sketch: converter is the caller's own object",
    "export.shared_quant": "a sketch: converter is the caller's own object",
    "export.measure": "reads a bundle or .tflite file exported beforehand",
    "export.ops": "reads a bundle or .tflite file exported beforehand",
    "export.runner": "reads a bundle or .tflite file exported beforehand",
    "export.tflite": "a sketch: corpus_windows is the caller's own object",
    "export.verification": "a sketch: result is the caller's own object",
    "lowrank.factorize.factorize": "a sketch: x is the caller's own object",
    "lowrank.layers": "a sketch: u is the caller's own object",
    "lowrank.svd": "a sketch: x is the caller's own object",
    "lowrank.tensor": "a sketch: kernel is the caller's own object",
    "models.decoders": "a sketch: MyLM is the caller's own object",
    "models.decoders.base": "a sketch: backbone is the caller's own object",
    "models.decoders.gemma": "a sketch: read_decoder is the caller's own object",
    "models.decoders.gpt2": "a sketch: read_decoder is the caller's own object",
    "models.decoders.hub_llama": "a sketch: read_decoder is the caller's own object",
    "models.decoders.ours": "a sketch: read_decoder is the caller's own object",
    "models.decoders.phi3": "a sketch: read_decoder is the caller's own object",
    "models.decoders.registry": "a sketch: MyLM is the caller's own object",
    "models.decoders.registry.register_decoder": "a sketch: MyLM is the caller's own object",
    "models.decoders.smollm3": "a sketch: read_decoder is the caller's own object",
    "models.gpt_integer": "converts a trained teacher to full int8 (tens of seconds; an "
                          "untrained one fails verification)",
    "models.lean": "a sketch: ids is the caller's own object",
    "models.llama.build_llama_block": "a sketch: cfg is the caller's own object",
    "models.llama.causal_lm_perplexity": "a sketch: text is the caller's own object",
    "models.loaders": "a sketch: path is the caller's own object",
    "models.loaders.gguf": "needs a real model: the SmolLM2 GGUF or a Hugging Face folder",
    "models.loaders.gguf.gguf_tensors": "a sketch: reader is the caller's own object",
    "models.loaders.kerashub": "needs a real model: the SmolLM2 GGUF or a Hugging Face folder",
    "models.loaders.readers": "needs a real model: the SmolLM2 GGUF or a Hugging Face folder",
    "models.loaders.safetensors": "needs a real model: the SmolLM2 GGUF or a Hugging Face folder",
    "models.training": "a sketch: corpus is the caller's own object",
    "prune": "a sketch: calibration_ids is the caller's own object",
    "prune.config.TaylorConfig": "a sketch: x is the caller's own object",
    "prune.oneshot.block_pruner": "a sketch: layers is the caller's own object",
    "prune.structured": "its parameter count (717) is of a larger model than the one here",
    "prune.tfmot": "a sketch: tf_keras_model is the caller's own object",
    "prune.training.UpdatePruning": "a sketch: data is the caller's own object",
    "prune.training.keep_zeros": "a sketch: reloaded is the caller's own object",
    "quantize": "its group sizes (32-128) need a model wider than the 16-wide one here",
    "quantize.api": "its group sizes (32-128) need a model wider than the 16-wide one here",
    "quantize.api.gptq_compress": "a sketch: layers is the caller's own object",
    "quantize.api.quantize": "its group sizes (32-128) need a model wider than the 16-wide one "
                             "here",
    "quantize.config.GPTQConfig": "its group sizes (32-128) need a model wider than the 16-wide"
                                  " one here",
    "quantize.config.KerasGPTQConfig": "needs a model of plain Dense layers (Keras's GPTQ skips"
                                       " MultiHeadAttention's)",
    "quantize.config.RTNConfig": "its group sizes (32-128) need a model wider than the 16-wide "
                                 "one here",
    "quantize.config._GridConfig.litert_int4": "a sketch: w is the caller's own object",
    "quantize.gptq": "a sketch: x is the caller's own object",
    "quantize.mixed": "a sketch: sizes is the caller's own object",
    "quantize.packing": "a sketch: codes is the caller's own object",
    "quantize.qat": "its group sizes (32-128) need a model wider than the 16-wide one here",
    "quantize.quantizers": "a sketch: w is the caller's own object",
    "quantize.rotate": "needs a Llama-family model (our port or KerasHub's)",
    "quantize.rotate.rotate": "a sketch: load_gguf is the caller's own object",
    "quantize.storage": "a sketch: layer is the caller's own object",
    "quantize.storage.cache_decoded": "a sketch: int4_model is the caller's own object",
    "quantize.tfmot_path": "a sketch: tf_keras_model is the caller's own object",
    "recipes": "runs the user's recipe and files named in it",
    "recipes.bundles": "a sketch: run is the caller's own object",
    "recipes.bundles.quantized_from": "a sketch: run is the caller's own object",
    "recipes.inputs": "a sketch: recipe is the caller's own object",
    "recipes.runner": "runs the user's recipe and files named in it",
    "recipes.runner.run_recipe": "runs the user's recipe and files named in it",
    "recipes.schema": "runs the user's recipe and files named in it",
    "recipes.sources": "runs the user's recipe and files named in it",
    "recipes.stages": "a sketch: run is the caller's own object",
    "recipes.students.choose_blocks": "its scores are those of a trained 4-block teacher",
    "distill.api": "fits a Distiller (tens of seconds on a busy machine; tests/test_verbs.py "
                   "runs it)",
    "export.converter": "converts a model to .tflite (tens of seconds; tests/test_export.py does)",
    "export.tflite.export_tflite": "converts a model to .tflite (tens of seconds; "
                                   "tests/test_export.py does)",
    "export.llm.export_llm": "converts a model to an on-device bundle (tens of seconds; "
                             "tests/test_export_llm.py does)",
    "lowrank.factorize": "a sketch: compile(...) and fit(...) stand for the caller's settings",
    "prune.training": "a sketch: compile(...) and fit(data, ...) stand for the caller's "
                      "settings",
    "quantize.smooth": "converts a model to int8 .tflite (tens of seconds; tests/test_smooth.py"
                       " does)",
    "core.calibration.calibrate": "a sketch: layers is the caller's own object",
    "core.calibration.input_hooks": "a sketch: layer is the caller's own object",
    "core.compressor": "a sketch: layers is the caller's own object",
    "core.compressor.Chain": "a sketch: layers is the caller's own object",
    "core.layers.register_layer": "a sketch: MyDense is the caller's own object",
    "core.replace": "a sketch: new_up is the caller's own object",
    "core.resume": "a sketch: key is the caller's own object",
    "distill.distiller.Distiller.on_policy_batch": "a sketch: distiller is the caller's own object",
    "distill.on_policy": "a sketch: x is the caller's own object",
    "export.llm_budget.layer_sensitivity": "a sketch: xtx is the caller's own object",
    "lowrank.spectra": "a sketch: layers is the caller's own object",
    "prune.oneshot.SparseGPTPruner": "a sketch: layers is the caller's own object",
    "prune.oneshot.WandaPruner": "a sketch: layers is the caller's own object",
    "quantize.gptq.GPTQCompressor": "a sketch: layers is the caller's own object",
    "distill.options": "shows the error a misspelt key gets, not its traceback",
}


@functools.cache
def _shared() -> dict:
    import keras

    import tfcompress
    from tfcompress.data import ByteTokenizer
    from tfcompress.models import build_gpt

    names = {"np": np, "keras": keras, "tfcompress": tfcompress}
    for package in tfcompress.SUBPACKAGES:
        module = importlib.import_module(f"tfcompress.{package}")
        names.update({n: getattr(module, n) for n in getattr(module, "__all__", ())})
    keras.utils.set_random_seed(0)
    teacher = build_gpt("test-tiny", vocab_size=256, seq_len=128, d_model=16, n_layers=2,
                        n_heads=2, name="gpt")
    student = build_gpt("test-tiny", vocab_size=256, seq_len=128, d_model=16, n_layers=1,
                        n_heads=2, name="student")
    windows = np.random.default_rng(0).integers(0, 256, (8, 129)).astype("int32")
    batches = [(windows[:4, :-1], windows[:4, 1:]), (windows[4:, :-1], windows[4:, 1:])]
    names.update(model=teacher, teacher=teacher, student=student, tokenizer=ByteTokenizer(),
                 windows=windows[:, :-1], token_windows=windows[:, :-1], ids=windows[:, :-1],
                 calibration=batches, batches=batches)
    return names


@pytest.fixture(autouse=True)
def _doctest_namespace(request):
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    name = request.node.name.removeprefix("tfcompress.")
    if name in NOT_RUNNABLE:
        pytest.skip(NOT_RUNNABLE[name])
    import keras

    globs = request.node.dtest.globs
    for key, value in _shared().items():
        globs.setdefault(key, value)  # the module's own names come first
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
    # progress lines go to the log, as for a user who turned Keras's interactive logging off
    keras.config.disable_interactive_logging()
    yield
    keras.config.enable_interactive_logging()
