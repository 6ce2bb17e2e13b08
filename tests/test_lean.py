"""Lean block-wise calibration (`lean_compress`) against the in-memory verbs on a tiny Llama
safetensors folder: the same compressed kernels, an output folder that loads, bad input
refused before anything is written."""

import re

import numpy as np
import pytest

from tests.llm_checkpoints import CFG, hf_llama_config, random_llama, write_gguf, write_hf_folder
from tfcompress.core.layers import kernel_matrix
from tfcompress.errors import TfcompressError
from tfcompress.models.lean import lean_compress
from tfcompress.models.loaders import load_gguf, load_safetensors
from tfcompress.prune import MagnitudeConfig, SparseGPTConfig, WandaConfig, prune
from tfcompress.quantize import GPTQConfig, QuantizeConfig, quantize

IDS = np.random.default_rng(1).integers(0, CFG["vocab"], (10, 12)).astype("int32")  # 2 batches
KERNELS = [f"block{i}_{n}" for i in range(CFG["layers"])
           for n in ("attn_q", "attn_k", "attn_v", "attn_out", "mlp_gate", "mlp_up", "mlp_down")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("lean") / "src"
    write_hf_folder(path, hf_llama_config(tied=True), random_llama(tied=True))
    (path / "tokenizer.json").write_text("{}")
    return path


def _kernels(model) -> dict:
    return {n: kernel_matrix(model.get_layer(n)) for n in KERNELS}


@pytest.mark.parametrize("config, verb", [
    (GPTQConfig(bits=4, act_order=True), quantize),
    (SparseGPTConfig(sparsity=0.5), prune),
    (SparseGPTConfig(sparsity=0.5, layerwise=True), prune)],
    ids=["gptq", "sparsegpt", "sparsegpt_layerwise"])
def test_lean_gives_the_in_memory_weights_and_loads(folder, tmp_path, config, verb):
    seen = []
    summary = lean_compress(folder, tmp_path / "out", config, IDS, verbose=0,
                            on_block=lambda i, s: seen.append(i))
    assert summary["blocks"] == CFG["layers"] and seen == [0, 1]
    lean = load_safetensors(tmp_path / "out")
    ref = verb(load_safetensors(folder), config, calibration=IDS, verbose=0)
    got, want = _kernels(lean), _kernels(ref)
    for name in KERNELS:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)
    original = _kernels(load_safetensors(folder))
    assert all(not np.allclose(got[n], original[n]) for n in KERNELS)  # every kernel changed
    if verb is prune:
        assert all(abs((got[n] == 0).mean() - 0.5) < 0.02 for n in KERNELS)
    np.testing.assert_allclose(lean.predict(IDS, verbose=0), ref.predict(IDS, verbose=0),
                               atol=1e-4)
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"


def test_lean_reads_a_gguf_file_as_load_gguf_does(tmp_path):
    """A GGUF source (q/k rows un-permuted, its metadata written as config.json): the same
    SparseGPT kernels as pruning `load_gguf`'s model in memory."""
    path = write_gguf(tmp_path / "tiny.gguf", random_llama(tied=True))
    config = SparseGPTConfig(sparsity=0.5)
    lean_compress(path, tmp_path / "out", config, IDS, verbose=0)
    got = _kernels(load_safetensors(tmp_path / "out"))
    want = _kernels(prune(load_gguf(path), config, calibration=IDS, verbose=0))
    for name in KERNELS:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)


def test_lean_partial_run_copies_the_other_blocks(folder, tmp_path):
    lean_compress(folder, tmp_path / "out", WandaConfig(sparsity=0.5), IDS,
                  n_blocks=1, verbose=0)
    got, original = _kernels(load_safetensors(tmp_path / "out")), _kernels(
        load_safetensors(folder))
    assert (got["block0_mlp_up"] == 0).mean() == 0.5
    np.testing.assert_array_equal(got["block1_mlp_up"], original["block1_mlp_up"])


@pytest.mark.parametrize("kwargs, message", [
    ({"config": MagnitudeConfig()}, "one-shot unstructured SparseGPTConfig"),
    ({"calibration": IDS + CFG["vocab"]}, "calibration"),
    ({"out_dtype": "int8"}, "out_dtype must be one of"),
    ({"config": GPTQConfig(bits=4, granularity="group", group_size=64)},
     "group_size=64 must divide the input axis (32 rows)"),
    ({"n_blocks": 3}, "n_blocks must be in [0, 2], got 3"),
])
def test_lean_refuses_bad_input_before_writing(folder, tmp_path, kwargs, message):
    args = {"config": GPTQConfig(bits=4), "calibration": IDS} | kwargs
    with pytest.raises(TfcompressError, match=re.escape(message)):
        lean_compress(folder, tmp_path / "out", verbose=0, **args)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_lean_refuses_a_full_output_folder(folder, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(TfcompressError, match="is not empty"):
        lean_compress(folder, tmp_path / "out", QuantizeConfig(method="gptq", bits=4), IDS,
                      verbose=0)
    assert (tmp_path / "out" / "x").read_text() == "keep"


def test_lean_frees_each_block_before_the_next(folder, tmp_path):
    # a block's Keras model sits in reference cycles; left to Python's rare full collections,
    # 24 blocks of a 1.7 B-shaped model piled up to 4 GB (benchmarks/big_model.py)
    import gc

    import keras

    alive = []

    def on_block(index, seconds):
        alive.append(sum(isinstance(o, keras.Model) for o in gc.get_objects()))

    gc.collect()  # what earlier tests left behind
    before = sum(isinstance(o, keras.Model) for o in gc.get_objects())
    lean_compress(folder, tmp_path / "out", WandaConfig(sparsity=0.5), IDS, on_block=on_block,
                  verbose=0)
    assert alive == [before] * CFG["layers"]
