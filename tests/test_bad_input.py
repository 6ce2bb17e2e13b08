"""Bad input to every public verb, loader and CLI command: each case raises `TfcompressError`
naming the argument (the CLI exits 2 with one line), before any work, and leaves the user's
model weights and files as they were (hashed before and after).

One tiny model and one folder of bad files serve the whole module, so each case costs
milliseconds.
"""

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import tfcompress
from tfcompress import TfcompressError
from tfcompress.core.saving import load_model
from tfcompress.data import load_corpus
from tfcompress.data.tokenizers import tokenizer_from_json
from tfcompress.distill.cache import cache_teacher, load_teacher_cache
from tfcompress.export import TFLiteRunner, export_tflite, generate_text
from tfcompress.models import build_gpt
from tfcompress.models.gpt import GPTConfig
from tfcompress.models.loaders import load_gguf, load_safetensors
from tfcompress.models.loaders.gguf import gguf_tokenizer
from tfcompress.models.loaders.safetensors import hf_tokenizer
from tfcompress.prune import PruneConfig, prune, prune_tf_keras, strip_pruning
from tfcompress.quantize import qat, quantize, rotate, sensitivity, smooth, strip_qat

VOCAB, POS = 32, 8


def _distiller(c):
    from tfcompress.distill import Distiller

    distiller = Distiller(c.model, c.student, alpha=0.5)
    distiller.compile(optimizer="sgd")
    return distiller


class Ctx:
    """The module's shared model, its compressed variants and its folder of files."""

    def __init__(self, root: Path):
        import keras

        keras.utils.set_random_seed(0)
        self.root = root
        self.model = build_gpt(GPTConfig(vocab_size=VOCAB, seq_len=POS, d_model=16,
                                         n_layers=1, n_heads=2, d_ff=32))
        self.ids = np.random.default_rng(0).integers(0, VOCAB, (2, POS)).astype("int32")
        self.student = build_gpt(GPTConfig(vocab_size=VOCAB, seq_len=POS, d_model=8,
                                           n_layers=1, n_heads=2, d_ff=16), name="student")
        self.quantized = quantize(self.model, verbose=0)
        self.qat = qat(self.model)
        self.keras_int8 = quantize(self.model, method="keras_int8", include=["block0_mlp_in"],
                                   verbose=0)
        self.files = self._write_files()

    def _write_files(self) -> dict[str, Path]:
        r = self.root
        f = {}

        def put(name: str, data: bytes | str) -> Path:
            path = r / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data if isinstance(data, bytes) else data.encode())
            f[name] = path
            return path

        put("binary.txt", bytes(range(128, 256)) * 8)
        put("empty.txt", b"")
        put("empty.tflite", b"")
        put("garbage.tflite", b"TFL3 not really a flatbuffer" * 4)
        put("empty.keras", b"")
        put("truncated.keras", b"PK\x03\x04" + b"\x00" * 40)
        put("garbage.gguf", b"GGUF" + b"\xff" * 60)
        put("notgguf.gguf", b"hello world, not gguf" * 4)
        put("a_file", b"x")
        gpt2 = {"model_type": "gpt2", "vocab_size": 32, "n_embd": 16, "n_layer": 1, "n_head": 2}
        put("st_garbage_config/config.json", "{not json")
        put("st_list_config/config.json", "[1, 2]")
        put("st_missing_key/config.json", json.dumps({"model_type": "llama", "vocab_size": 8}))
        put("st_bad_type/config.json", json.dumps({"model_type": "bert"}))
        put("st_bad_act/config.json", json.dumps({**gpt2, "activation_function": "relu"}))
        for name, blob in {"st_garbage": b"garbage bytes here",
                           "st_truncated": struct.pack("<Q", 200) + b'{"a": {"dtype"',
                           "st_huge_header": struct.pack("<Q", 2**62) + b"{}",
                           "st_empty": b""}.items():
            put(f"{name}/config.json", json.dumps(gpt2))
            put(f"{name}/model.safetensors", blob)
        put("st_dir_named/config.json", json.dumps(gpt2))
        (r / "st_dir_named" / "model.safetensors").mkdir()
        put("st_no_config/model.safetensors", b"")
        put("tok_bad/tokenizer.json", '{"model": {"type": "Nonsense"}}')
        put("tok_garbage/tokenizer.json", "{{{")
        (r / "no_tok").mkdir()
        put("not_cache/readme.txt", "hello")
        return f

    def hashes(self) -> dict:
        digest = {"weights": [hashlib.sha1(w.tobytes()).hexdigest()
                              for w in self.model.get_weights()]}
        for path in sorted(self.root.rglob("*")):
            if path.is_file():
                digest[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
        return digest


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Ctx(tmp_path_factory.mktemp("bad_input"))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, ctx):
    """A tf.data snapshot that is not a teacher cache (two components)."""
    import tensorflow as tf

    path = ctx.root / "snapshot"
    tf.data.Dataset.from_tensor_slices((ctx.ids, ctx.ids)).save(str(path))
    return path


# -- bad calibration data, swept over every verb that reads it --------------------------------

BAD_IDS = {
    # name: (value maker, words the message must hold)
    "id_at_vocab": (lambda c: np.full((2, POS), VOCAB, "int32"), r"token id 32.*\[0, 32\)"),
    "id_far_above": (lambda c: np.full((1, 4), 10_000, "int64"), r"token id 10000"),
    "negative_id": (lambda c: -np.ones((2, POS), "int32"), r"token id -1"),
    "float_ids": (lambda c: c.ids.astype("float32"), r"integer token ids.*float32"),
    "one_d": (lambda c: c.ids[0], r"shape \(batch, seq_len\).*\[None\]"),
    "three_d": (lambda c: c.ids[None], r"shape \(batch, seq_len\)"),
    "empty_rows": (lambda c: np.zeros((0, POS), "int32"), r"empty"),
    "empty_list": (lambda c: [], r"empty"),
    "string": (lambda c: "the quick brown fox", r"must be token ids"),
    "too_long": (lambda c: np.ones((1, POS + 8), "int32"), r"16 tokens.*8 positions"),
    "ragged": (lambda c: [[1, 2, 3], [4]], r"rectangular|shape"),
    "bool_ids": (lambda c: np.ones((2, POS), bool), r"integer token ids.*bool"),
}

CALIBRATED = {
    # verb: (call(ctx, bad), argument name in the message)
    "prune_wanda": (lambda c, x: prune(c.model, method="wanda", calibration=x), "calibration"),
    "prune_sparsegpt": (lambda c, x: prune(c.model, method="sparsegpt", calibration=x),
                        "calibration"),
    "prune_neurons": (lambda c, x: prune(c.model, method="wanda", pattern="neurons",
                                         calibration=x), "calibration"),
    "quantize_gptq": (lambda c, x: quantize(c.model, method="gptq", calibration=x, verbose=0),
                      "calibration"),
    "quantize_keras_gptq": (lambda c, x: quantize(c.model, method="keras_gptq", types=("Dense",),
                                                  calibration=x, verbose=0), "calibration"),
    "sensitivity": (lambda c, x: sensitivity(c.model, x), "calibration"),
    "smooth": (lambda c, x: smooth(c.model, x, verbose=0), "calibration"),
    "factorize_svd_llm": (lambda c, x: tfcompress.factorize(c.model, method="svd-llm",
                                                            target_ratio=0.8, calibration=x,
                                                            verbose=False), "calibration"),
    "factorize_asvd": (lambda c, x: tfcompress.factorize(c.model, method="asvd",
                                                         target_ratio=0.8, calibration=x,
                                                         verbose=False), "calibration"),
}

def calibration_cases():
    for verb, (call, arg) in CALIBRATED.items():
        for bad, (make, words) in BAD_IDS.items():
            yield pytest.param(call, make, arg, words, id=f"{verb}-{bad}")


# -- every other verb and loader ------------------------------------------------------------

def cases():
    compressed = {"quantized": "quantized by tfcompress.quantize",
                  "qat": "a QAT model.*strip_qat",
                  "keras_int8": "quantized by Keras"}
    verbs = {"prune": lambda m: prune(m, sparsity=0.5),
             "quantize": lambda m: quantize(m, verbose=0),
             "qat": lambda m: qat(m),
             "factorize": lambda m: tfcompress.factorize(m, method="svd", rank=2, verbose=False),
             "sensitivity": lambda m: sensitivity(m, np.zeros((1, 4), "int32"))}
    for kind, words in compressed.items():
        for verb, call in verbs.items():
            yield (f"{verb}_on_{kind}", lambda c, k=kind, v=call: v(getattr(c, k)),
                   rf"model .*already {words}" if kind != "qat" else rf"model .*{words}")
    for verb, call in {
        "export_tflite": lambda c, n: export_tflite(c.model, c.root / "x.tflite", seq_len=n,
                                                    verbose=False),
        "evaluate": lambda c, n: tfcompress.evaluate(c.model, seq_len=n, batch_sizes=()),
        "generate_text": lambda c, n: generate_text(c.model, _Tok(), "ab", seq_len=n),
    }.items():
        for n, words in [(POS + 1, r"seq_len=9 is longer .*\(8 positions\)"), (0, "seq_len must"),
                         (-3, "seq_len must"), ("8", "seq_len must"), (2.5, "seq_len must"),
                         (True, "seq_len must")]:
            yield f"{verb}_seq_len_{n!r}", lambda c, v=call, n=n: v(c, n), words
    for folder in ("st_garbage", "st_truncated", "st_huge_header"):
        yield (folder, lambda c, f=folder: load_safetensors(c.root / f),
               rf"{folder}/model.safetensors.* as a safetensors file")
    for folder in ("tok_bad", "tok_garbage"):
        yield (f"hf_{folder}", lambda c, f=folder: hf_tokenizer(c.root / f),
               rf"{folder}/tokenizer.json.* Hugging Face tokenizer.json")
    yield from [
        # export paths, checked before converting
        ("export_to_folder", lambda c: export_tflite(c.model, c.root, seq_len=POS),
         "path .* is a folder"),
        ("export_under_a_file", lambda c: export_tflite(c.model, c.files["a_file"] / "m.tflite",
                                                        seq_len=POS), "path .* which is a file"),
        ("export_path_not_a_path", lambda c: export_tflite(c.model, 123, seq_len=POS),
         "path must be a file path"),
        ("export_empty_path", lambda c: export_tflite(c.model, "", seq_len=POS),
         "path must be a file path"),
        ("export_mode", lambda c: export_tflite(c.model, c.root / "m.tflite", mode="int3"),
         "mode must be one of"),
        ("export_not_a_model", lambda c: export_tflite("model", c.root / "m.tflite"),
         "model must be a Keras model"),
        ("export_keras_int8", lambda c: export_tflite(c.keras_int8, c.root / "m.tflite",
                                                      seq_len=POS), "Keras-native quantized"),
        ("export_smooth_strength", lambda c: export_tflite(
            c.model, c.root / "m.tflite", "int8", seq_len=POS, calibration=c.ids,
            smooth=1.5), r"smooth .*\[0, 1\].*got 1.5"),
        ("export_smooth_float_mode", lambda c: export_tflite(
            c.model, c.root / "m.tflite", seq_len=POS, smooth=0.5), "smooth is only for"),
        ("smooth_strength", lambda c: smooth(c.model, c.ids, strength=-1), r"strength .*got -1"),
        ("smooth_on_quantized", lambda c: smooth(c.quantized, c.ids),
         "model .*already quantized by tfcompress.quantize"),
        ("rotate_gpt", lambda c: rotate(c.model, verbose=0),
         r"rotate supports llama .*model .gpt. \(Functional\) is none"),
        ("rotate_seed", lambda c: rotate(c.model, seed=-1), r"seed must be .*got -1"),
        ("rotate_on_quantized", lambda c: rotate(c.quantized),
         "model .*already quantized by tfcompress.quantize"),
        ("rotate_not_a_model", lambda c: rotate("model"), "model must be a Keras"),
        # evaluate: data and files
        ("evaluate_inputs_over_vocab", lambda c: tfcompress.evaluate(
            c.model, (c.ids + VOCAB, c.ids), batch_sizes=()), r"data inputs holds token id"),
        ("evaluate_targets_over_vocab", lambda c: tfcompress.evaluate(
            c.model, (c.ids, c.ids + VOCAB), batch_sizes=()), r"data targets holds token id"),
        ("evaluate_float_inputs", lambda c: tfcompress.evaluate(
            c.model, (c.ids * 1.0, c.ids), batch_sizes=()), r"data inputs must hold integer"),
        ("evaluate_1d_inputs", lambda c: tfcompress.evaluate(
            c.model, (c.ids[0], c.ids[0]), batch_sizes=()), r"data inputs must be token ids"),
        ("evaluate_too_long", lambda c: tfcompress.evaluate(
            c.model, (np.ones((1, 12), "int32"),) * 2, batch_sizes=()), r"8 positions"),
        ("evaluate_bad_batch", lambda c: tfcompress.evaluate(
            c.model, [(c.ids,)], batch_sizes=()), r"data\[0\] must be an \(inputs, targets"),
        ("evaluate_missing_tflite", lambda c: tfcompress.evaluate(c.root / "nope.tflite"),
         "model .*does not exist"),
        ("evaluate_empty_tflite", lambda c: tfcompress.evaluate(c.files["empty.tflite"]),
         r"model .*empty \(0 bytes\)"),
        ("evaluate_garbage_tflite", lambda c: tfcompress.evaluate(c.files["garbage.tflite"]),
         r"garbage.tflite.* as a .tflite model"),
        ("evaluate_wrong_suffix", lambda c: tfcompress.evaluate(c.files["binary.txt"]),
         "must end in .tflite"),
        ("evaluate_task", lambda c: tfcompress.evaluate(c.model, task="nope"), "task must be"),
        ("evaluate_not_a_model", lambda c: tfcompress.evaluate(42), "model must be a Keras"),
        ("runner_garbage", lambda c: TFLiteRunner(c.files["garbage.tflite"]),
         r"garbage.tflite.* as a .tflite model"),
        ("runner_bytes", lambda c: TFLiteRunner(b"\x00" * 16), r"<model bytes>"),
        ("runner_missing", lambda c: TFLiteRunner(c.root / "none.tflite"), "does not exist"),
        ("generate_empty_tflite", lambda c: generate_text(c.files["empty.tflite"], _Tok(), "a"),
         r"empty \(0 bytes\)"),
        ("generate_prompt_not_str", lambda c: generate_text(c.model, _Tok(), 5, seq_len=POS),
         "prompt must be a string"),
        # .keras loading
        ("load_truncated_keras", lambda c: load_model(c.files["truncated.keras"]),
         r"truncated.keras. is not a .keras archive: not a zip file"),
        ("load_empty_keras", lambda c: load_model(c.files["empty.keras"]), r"empty \(0 bytes\)"),
        ("load_missing_keras", lambda c: load_model(c.root / "none.keras"), "does not exist"),
        ("load_wrong_suffix", lambda c: load_model(c.files["binary.txt"]), "must end in .keras"),
        ("load_folder", lambda c: load_model(c.root), "is not a file"),
        # safetensors folders
        ("st_missing_folder", lambda c: load_safetensors(c.root / "nowhere"), "does not exist"),
        ("st_file_not_folder", lambda c: load_safetensors(c.files["a_file"]), "must be a folder"),
        ("st_no_config", lambda c: load_safetensors(c.root / "st_no_config"), "no config.json"),
        ("st_garbage_config", lambda c: load_safetensors(c.root / "st_garbage_config"),
         r"config.json.* as a JSON config: JSONDecodeError"),
        ("st_list_config", lambda c: load_safetensors(c.root / "st_list_config"),
         "must hold a JSON object"),
        ("st_missing_key", lambda c: load_safetensors(c.root / "st_missing_key"),
         r"st_missing_key/config.json.*llama config.*KeyError"),
        ("st_bad_type", lambda c: load_safetensors(c.root / "st_bad_type"),
         "model_type is 'bert'"),
        ("st_bad_activation", lambda c: load_safetensors(c.root / "st_bad_act"),
         "activation_function is 'relu'"),
        ("st_empty_file", lambda c: load_safetensors(c.root / "st_empty"), r"empty \(0 bytes\)"),
        ("st_dir_named_safetensors", lambda c: load_safetensors(c.root / "st_dir_named"),
         r"model.safetensors.* is not a file"),
        ("hf_tokenizer_missing", lambda c: hf_tokenizer(c.root / "no_tok"), "no tokenizer.json"),
        ("tokenizer_from_json_garbage", lambda c: tokenizer_from_json("{{"),
         r"tokenizer's JSON: JSONDecodeError"),
        ("tokenizer_from_json_bytes", lambda c: tokenizer_from_json(b"{}"), "text must be"),
        # GGUF
        ("gguf_missing", lambda c: load_gguf(c.root / "none.gguf"), "does not exist"),
        ("gguf_garbage", lambda c: load_gguf(c.files["garbage.gguf"]),
         r"garbage.gguf.* not a readable GGUF"),
        ("gguf_not_gguf", lambda c: load_gguf(c.files["notgguf.gguf"]),
         r"notgguf.gguf.* not a readable GGUF"),
        ("gguf_empty", lambda c: load_gguf(c.files["empty.txt"]), r"empty \(0 bytes\)"),
        ("gguf_folder", lambda c: load_gguf(c.root), "is not a file"),
        ("gguf_tokenizer_garbage", lambda c: gguf_tokenizer(c.files["garbage.gguf"]),
         r"garbage.gguf.* not a readable GGUF"),
        # teacher cache
        ("cache_load_not_dir", lambda c: load_teacher_cache(c.files["a_file"], 2),
         "not a teacher cache"),
        ("cache_load_random_dir", lambda c: load_teacher_cache(c.root / "not_cache", 2),
         r"not_cache.* as a teacher cache"),
        ("cache_load_batch_size", lambda c: load_teacher_cache(c.root / "not_cache", 0),
         "batch_size must be"),
        ("cache_xy_batches", lambda c: cache_teacher(c.model, _xy(c), c.root / "cache"),
         r"dataset must yield \(x, y, mask\)"),
        ("cache_not_dataset", lambda c: cache_teacher(c.model, [c.ids], c.root / "cache"),
         "dataset must be a tf.data.Dataset"),
        ("cache_to_a_file", lambda c: cache_teacher(c.model, _xym(c), c.files["a_file"]),
         "path .* is a file; give a folder"),
        ("cache_top_k", lambda c: cache_teacher(c.model, _xym(c), c.root / "c", top_k=0),
         "top_k must be"),
        ("cache_teacher_not_model", lambda c: cache_teacher("teacher", _xym(c), c.root / "c"),
         "teacher must be"),
        # corpora
        ("corpus_binary", lambda c: load_corpus(c.files["binary.txt"]),
         r"binary.txt.* as UTF-8 text.*UnicodeDecodeError"),
        ("corpus_missing", lambda c: load_corpus(c.root / "nope.txt"), "does not exist"),
        ("corpus_empty", lambda c: load_corpus(c.files["empty.txt"]), "empty"),
        ("corpus_tokenizer", lambda c: load_corpus("austen", tokenizer="wordpiece"),
         "tokenizer must be one of"),
        # pruning and QAT helpers
        ("prune_tf_keras_2_3", lambda c: prune_tf_keras(_tf_keras_16(), pattern="2:3"),
         r"pattern '2:3' needs each layer's input size divisible by 3"),
        ("prune_tf_keras_keras3", lambda c: prune_tf_keras(c.model), "Keras 3 model"),
        ("strip_pruning_string", lambda c: strip_pruning("not a model"), "Keras 3 keras.Model"),
        ("strip_qat_string", lambda c: strip_qat("not a model"), "Keras 3 keras.Model"),
        ("strip_qat_plain", lambda c: strip_qat(c.model), "has no QAT layers"),
        ("prune_nm_indivisible", lambda c: prune(c.model, pattern="2:3"),
         "divisible by 3"),
        ("prune_taylor_no_data", lambda c: prune(c.model, method="taylor"),
         "calibration is required"),
        ("prune_taylor_ids_over_vocab", lambda c: prune(c.model, method="taylor",
                                                        calibration=(c.ids + VOCAB, c.ids)),
         "calibration holds token id"),
        ("prune_wanda_no_data", lambda c: prune(c.model, method="wanda"),
         "calibration is required"),
        ("prune_string_model", lambda c: prune("model"), "Keras 3 keras.Model"),
        ("distiller_fit_ids_over_vocab",
         lambda c: _distiller(c).fit(c.ids + VOCAB, c.ids, verbose=0),
         r"x holds token id \d+, but the model.s vocabulary is 32"),
        ("distiller_fit_targets_over_vocab",
         lambda c: _distiller(c).fit(c.ids, c.ids + VOCAB, verbose=0),
         r"y holds token id \d+, but the model.s vocabulary is 32"),
        ("distiller_fit_float_ids", lambda c: _distiller(c).fit(
            c.ids.astype("float32"), c.ids, verbose=0), "x must hold integer token ids"),
        ("distiller_fit_float_dataset", lambda c: _distiller(c).fit(
            __import__("tensorflow").data.Dataset.from_tensor_slices(
                (c.ids.astype("float32"), c.ids)).batch(2), verbose=0),
         "x in the dataset must be integer token ids"),
        ("prune_config_type", lambda c: prune(c.model, config={"sparsity": 0.5}),
         r"config must be a config of a prune method \(e.g. MagnitudeConfig\), got dict"),
        ("prune_sparsity", lambda c: PruneConfig(sparsity=1.5), r"sparsity must be .*\[0, 1\)"),
        ("prune_method", lambda c: PruneConfig(method="random"), "method must be one of"),
        ("quantize_bits", lambda c: quantize(c.model, bits=9, verbose=0), "bits must be"),
        ("quantize_gptq_none", lambda c: quantize(c.model, method="gptq", verbose=0),
         "calibration is required"),
        ("quantize_keras_gptq_attention", lambda c: quantize(c.model, method="keras_gptq",
                                                             calibration=c.ids, verbose=0),
         "KerasGPTQConfig cannot quantize layers inside MultiHeadAttention.*GPTQConfig"),
        ("quantize_string_model", lambda c: quantize("model"), "Keras 3 keras.Model"),
        ("qat_tensor_granularity", lambda c: qat(c.model, granularity="tensor"),
         "qat supports scheme='affine'"),
        ("factorize_no_calibration", lambda c: tfcompress.factorize(
            c.model, method="svd-llm", target_ratio=0.5, verbose=False), "need calibration"),
        ("factorize_string_model", lambda c: tfcompress.factorize("model"),
         "Keras 3 keras.Model"),
    ]


class _Tok:
    def encode(self, text):
        return np.frombuffer(text.encode(), np.uint8).astype("int32") % VOCAB

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def _xy(c):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((c.ids, c.ids)).batch(2)


def _xym(c):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((c.ids, c.ids, np.ones_like(c.ids))).batch(2)


def _tf_keras_16():
    tf_keras = pytest.importorskip("tf_keras")
    return tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(16,))])


CASES = list(cases())


def assert_clean_error(ctx, call, words):
    before = ctx.hashes()
    with pytest.raises(TfcompressError, match=words) as info:
        call()
    assert "Traceback" not in str(info.value)
    assert ctx.hashes() == before


@pytest.mark.parametrize(("call", "make", "arg", "words"), calibration_cases())
def test_bad_calibration_is_refused_naming_the_argument(ctx, call, make, arg, words):
    assert_clean_error(ctx, lambda: call(ctx, make(ctx)), rf"{arg}.*({words})|({words}).*{arg}")


@pytest.mark.parametrize(("call", "words"), [pytest.param(c, w, id=i) for i, c, w in CASES])
def test_bad_input_is_refused_before_any_work(ctx, snapshot, call, words):
    assert_clean_error(ctx, lambda: call(ctx), words)


def test_tf_data_snapshot_that_is_not_a_cache(ctx, snapshot):
    assert_clean_error(ctx, lambda: load_teacher_cache(snapshot, 2),
                       r"snapshot but not a teacher cache")


@pytest.mark.parametrize(("name", "words"), [
    ("none.keras", "does not exist"),
    ("truncated.keras", "is not a .keras archive: not a zip file"),
    ("empty.keras", r"empty \(0 bytes\)"), ("empty.tflite", r"empty \(0 bytes\)"),
    ("none.tflite", "does not exist"), ("binary.txt", r"is not a .keras or .gguf file"),
])
def test_cli_evaluate_exits_2_with_one_line(ctx, capsys, name, words):
    from tfcompress.cli import main

    before = ctx.hashes()
    assert main(["evaluate", str(ctx.root / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err and "model" in err
    assert __import__("re").search(words, err)
    assert ctx.hashes() == before


def test_unwritable_export_path_is_refused_before_converting(ctx):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    folder = ctx.root / "locked"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o500)
    try:
        assert_clean_error(ctx, lambda: export_tflite(ctx.model, folder / "m.tflite",
                                                      seq_len=POS), "not writable")
    finally:
        folder.chmod(0o700)
