"""Every verb on every kind of Keras 3 model a user may bring (model kind x verb), tiny sizes.

Kinds: our functional GPT, a subclassed LM with nested custom blocks, KerasHub
``GPT2CausalLM`` / ``LlamaCausalLM`` / ``GemmaCausalLM`` (dict inputs token_ids +
padding_mask, small random configs) and a Sequential Conv classifier; the other KerasHub
families `export_llm` reads go through calibration once each. Each compressed model
must reload from ``.keras`` with exactly the same outputs and without optimizer state.
"""

import zipfile

import h5py
import keras
import numpy as np
import pytest

import tfcompress as tfc
from tests.llm_checkpoints import tf_keras_transformer, tiny_causal_lm
from tfcompress.core.layers import copy_model, iter_layers, select_layers
from tfcompress.core.signature import model_inputs, signature
from tfcompress.errors import TfcompressError
from tfcompress.quantize import is_quantized, strip_qat

VOCAB, SEQ = 32, 8
LMS = ("gpt", "subclassed", "gpt2", "llama", "gemma")
KINDS = (*LMS, "conv")
DENSE = ("Dense", "EinsumDense")


@keras.saving.register_keras_serializable(package="tests_any_model")
class Block(keras.layers.Layer):
    """Pre-norm attention + MLP block (custom layer holding MHA, Dense and EinsumDense)."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.norm = keras.layers.LayerNormalization(name="norm")
        self.attn = keras.layers.MultiHeadAttention(2, width // 2, name="attn")
        self.up = keras.layers.Dense(2 * width, activation="gelu", name="up")
        self.down = keras.layers.EinsumDense("btf,fd->btd", (None, width), name="down")

    def call(self, x):
        h = self.norm(x)
        x = x + self.attn(h, h, use_causal_mask=True)
        return x + self.down(self.up(x))

    def get_config(self):
        return {**super().get_config(), "width": self.width}


@keras.saving.register_keras_serializable(package="tests_any_model")
class SubLM(keras.Model):
    def __init__(self, vocab=VOCAB, width=16, **kwargs):
        super().__init__(**kwargs)
        self.vocab, self.width = vocab, width
        self.tok = keras.layers.Embedding(vocab, width, name="tok")
        self.blocks = [Block(width, name="block0")]
        self.head = keras.layers.Dense(vocab, name="head")

    def call(self, ids):
        x = self.tok(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def get_config(self):
        return {**super().get_config(), "vocab": self.vocab, "width": self.width}


def _build(kind: str):
    keras.utils.set_random_seed(0)
    if kind == "gpt":
        return tfc.models.build_gpt("test-tiny", vocab_size=VOCAB, d_model=16, n_layers=1,
                                    seq_len=SEQ)
    if kind == "subclassed":
        model = SubLM(name="sub_lm")
        model(np.zeros((1, SEQ), "int32"))
        return model
    if kind in ("gpt2", "llama", "gemma"):
        return tiny_causal_lm(kind, VOCAB, SEQ, layers=1, hidden=16, heads=2, kv_heads=1,
                              head_dim=8)
    return keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(16, activation="relu",
                                                                  name="hidden"),
        keras.layers.Dense(4, name="logits")], name="classifier")


@pytest.fixture(scope="module")
def models():
    pytest.importorskip("keras_hub")
    return {kind: _build(kind) for kind in KINDS}


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, VOCAB, (4, SEQ)).astype("int32")


def _x(kind, ids):
    if kind == "conv":
        return np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    return ids


def _reloads_exactly(model, x, tmp_path):
    """Save, reload, same outputs to the bit, and no optimizer in the file."""
    path = tmp_path / "m.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive, h5py.File(archive.open("model.weights.h5")) as h5:
        assert "optimizer" not in h5  # the (compiled) float model's slots are not carried
    again = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(again(model_inputs(again, x))),
                                  np.asarray(model(model_inputs(model, x))))
    return again


@pytest.mark.parametrize("kind", KINDS)
def test_copy_keeps_paths_and_weights_without_compile_state(models, ids, kind):
    model = models[kind]
    model.compile("adam", "mse")
    clone = copy_model(model)
    assert type(clone) is type(model)
    assert [p for p, _ in iter_layers(clone)] == [p for p, _ in iter_layers(model)]
    x = model_inputs(model, _x(kind, ids))
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(model(x)))
    assert clone.optimizer is None and not clone.compiled and model.compiled
    kernel = select_layers(clone)[0][1].trainable_weights[0]
    kernel.assign(np.zeros(kernel.shape))
    assert np.abs(select_layers(model)[0][1].trainable_weights[0].numpy()).sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_prune_then_reload(models, ids, kind, tmp_path):
    model, x = models[kind], _x(kind, ids)
    method = "magnitude" if kind == "conv" else "wanda"
    pruned = tfc.prune(model, method=method, sparsity=0.5, data=[x], types=DENSE)
    layers = select_layers(pruned, types=DENSE)
    for path, layer in layers:
        kernel = np.asarray(layer.kernel)
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02), path
    _reloads_exactly(pruned, x, tmp_path)


@pytest.mark.parametrize("kind", ("gpt2", "llama", "gemma", "smollm3", "qwen2", "qwen3",
                                  "gemma3", "mistral", "phi3"))
def test_layerwise_sparsegpt_and_gptq_on_kerashub_blocks(models, ids, kind):
    """Each KerasHub family `export_llm` reads (past the three kinds above: `tests.llm_zoo_models`,
    with sliding windows, q/k norms, biases, Phi3's RoPE, NoPE layers) through the calibration
    engine. ``SparseGPTConfig(layerwise=True)``: q/k/v read the block's input in both ways, so
    they prune alike; every later layer reads what the layers pruned before it produce, so it
    prunes differently from the dense-run calibration. GPTQ changes the outputs less than
    rounding to nearest."""
    from tests.llm_zoo_models import zoo_model

    model = models[kind] if kind in models else zoo_model(kind, VOCAB, d=32, layers=1, window=4)
    kernels = {}
    for layerwise in (False, True):
        config = tfc.prune.SparseGPTConfig(sparsity=0.5, layerwise=layerwise)
        pruned = tfc.prune(model, config, calibration=[ids], verbose=0)
        kernels[layerwise] = {path: np.asarray(layer.kernel)
                              for path, layer in select_layers(pruned, types=DENSE)}
    assert len(kernels[True]) >= 6
    for path, kernel in kernels[True].items():
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02), path
        same = np.array_equal(kernel, kernels[False][path])
        assert same == path.endswith(("query", "key", "value", "q_proj", "k_proj", "v_proj")), path
    x, error = model_inputs(model, ids), {}
    for method in ("rtn", "gptq"):
        q = tfc.quantize(model, method=method, bits=3, granularity="channel", types=DENSE,
                         calibration=[ids], verbose=0)
        error[method] = float(np.mean((np.asarray(q(x)) - np.asarray(model(x))) ** 2))
    assert error["gptq"] < error["rtn"], error


@pytest.mark.parametrize("kind", ("subclassed", "gpt2"))
def test_structured_pruning_refuses_non_graph_models_naming_the_alternative(models, kind):
    with pytest.raises(TfcompressError, match=f"is a {type(models[kind]).__name__}: use an "
                       "unstructured or N:M pattern"):
        tfc.prune(models[kind], pattern="heads", sparsity=0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_quantize_int4_then_reload(models, ids, kind, tmp_path):
    model, x = models[kind], _x(kind, ids)
    q = tfc.quantize(model, bits=4, granularity="group", group_size=8, verbose=0)
    expected = [p for p, _ in select_layers(model, types=("Dense", "EinsumDense", "Embedding"))]
    assert sorted(p for p, la in iter_layers(q) if is_quantized(la)) == sorted(expected)
    again = _reloads_exactly(q, x, tmp_path)
    assert sorted(p for p, la in iter_layers(again) if is_quantized(la)) == sorted(expected)


@pytest.mark.parametrize("kind", ("subclassed", "gpt2"))  # Keras's quantize is slow on CPU
def test_keras_int8_quantizes_every_selected_layer(models, ids, kind, tmp_path):
    model = models[kind]
    q = tfc.quantize(model, method="keras_int8", types=("Dense",), verbose=0)
    dense = {p for p, _ in select_layers(q, types=("Dense",))}
    if kind == "subclassed":
        # Keras's own int8 file of a subclassed model does not load ("Layer 'down' expected 2
        # variables, but received 0"): its formula goes into code storage, which reloads
        assert {p for p, la in iter_layers(q) if is_quantized(la)} == dense
        _reloads_exactly(q, ids, tmp_path)
        with pytest.raises(TfcompressError, match="Keras's GPTQ file would not load"):
            tfc.quantize(model, method="keras_gptq", calibration=ids, types=("Dense",),
                         verbose=0)
    else:
        modes = {p: getattr(la, "quantization_mode", None)
                 for p, la in select_layers(q, types=("Dense",))}
        assert set(modes.values()) == {"int8"}, modes
    assert not any(getattr(la, "quantization_mode", None) for _, la in iter_layers(model))


@pytest.mark.parametrize("kind", KINDS)
def test_qat_strips_onto_codes(models, ids, kind):
    model, x = models[kind], _x(kind, ids)
    config = tfc.QuantizeConfig(bits=4, granularity="group", group_size=8, types=DENSE)
    stripped = strip_qat(tfc.qat(model, config))
    q = tfc.quantize(stripped, config, verbose=0)
    np.testing.assert_allclose(np.asarray(q(model_inputs(q, x))),
                               np.asarray(stripped(model_inputs(stripped, x))), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_factorize_then_reload(models, ids, kind, tmp_path):
    model, x = models[kind], _x(kind, ids)
    small = tfc.factorize(model, rank=2, method="svd", types=(*DENSE, "Conv2D"),
                          verbose=False)
    assert any(p.factorized for p in small.factorization)
    assert small.count_params() < model.count_params()
    _reloads_exactly(small, x, tmp_path)


@pytest.mark.parametrize("kind", LMS)
def test_evaluate_and_generate(models, ids, kind):
    model = models[kind]
    report = tfc.evaluate(model, (ids, ids), seq_len=SEQ, batch_sizes=(1,), repeats=1)
    assert report.latency["1"]["median_ms"] > 0
    assert 1 < report.quality["perplexity"] < 10 * VOCAB

    class Chars:
        def encode(self, text):
            return [ord(c) % VOCAB for c in text]

        def decode(self, tokens):
            return " ".join(map(str, tokens))

    text = tfc.generate_text(model, Chars(), "ab", max_new_tokens=3, seq_len=SEQ)
    assert len(text.split()) == 5


def test_classifier_evaluates_and_refuses_generation(models):
    model = models["conv"]
    x = _x("conv", None)
    report = tfc.evaluate(model, (x, np.argmax(model(x), -1)), task="classifier",
                          batch_sizes=())
    assert report.quality["accuracy"] == 1.0
    with pytest.raises(TfcompressError, match="Sequential.*float32.*classifier"):
        tfc.generate_text(model, None, "ab")


@pytest.fixture(scope="module")
def gpt2_fixed(models, ids, tmp_path_factory):
    """GPT2CausalLM exported with its padding mask fixed to ones inside the graph."""
    path = tmp_path_factory.mktemp("export") / "fixed.tflite"
    return tfc.export_tflite(models["gpt2"], path, seq_len=SEQ, sample=ids, verbose=False)


@pytest.mark.parametrize("kind", ("subclassed", "gpt2", "llama", "gemma"))
def test_export_tflite_single_input(models, ids, kind, tmp_path, request):
    if kind == "gpt2":
        result = request.getfixturevalue("gpt2_fixed")
    else:
        result = tfc.export_tflite(models[kind], tmp_path / "m.tflite", seq_len=SEQ,
                                   sample=_x(kind, ids), verbose=False)
    assert result.agreement == 1.0 and result.max_abs_error < 1e-4
    assert result.inputs == {"token_ids": "int32"}


def test_export_tflite_exposes_the_padding_mask(models, ids, gpt2_fixed, tmp_path):
    from tfcompress.export import TFLiteRunner

    model = models["gpt2"]
    result = tfc.export_tflite(model, tmp_path / "exposed.tflite", seq_len=SEQ, sample=ids,
                               auxiliary_inputs="exposed", verbose=False)
    assert result.inputs == {"token_ids": "int32", "padding_mask": "int32"}
    assert result.agreement == 1.0  # verified with a ones mask
    exposed, fixed = TFLiteRunner(result.path), TFLiteRunner(gpt2_fixed.path)
    np.testing.assert_allclose(exposed.predict(ids), fixed.predict(ids), atol=1e-6)
    np.testing.assert_allclose(exposed.predict(ids, padding_mask=np.ones_like(ids)),
                               fixed.predict(ids), atol=1e-6)
    for real in (slice(0, 5), slice(3, SEQ)):  # trailing padding, then leading padding
        mask = np.zeros_like(ids)
        mask[:, real] = 1
        keras_logits = np.asarray(model({"token_ids": ids, "padding_mask": mask}))
        last = real.stop - 1
        np.testing.assert_allclose(exposed.predict(ids, padding_mask=mask)[:, last],
                                   keras_logits[:, last], atol=1e-4)
    # left padding changes what the last position sees: the mask really reaches the graph
    assert np.abs(keras_logits[:, -1] - fixed.predict(ids)[:, -1]).max() > 1e-3
    with pytest.raises(TfcompressError, match=r"\['attention_mask'\].*\['padding_mask'\]"):
        exposed.predict(ids, attention_mask=np.ones_like(ids))
    ppl = [tfc.evaluate(r.path, (ids, ids), batch_sizes=()).quality["perplexity"]
           for r in (result, gpt2_fixed)]
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-5)


def test_export_tflite_refuses_unknown_auxiliary_inputs(models, tmp_path):
    with pytest.raises(TfcompressError, match=r"auxiliary_inputs must be one of \('fixed', "
                       r"'exposed'\).*got 'ones'"):
        tfc.export_tflite(models["gpt2"], tmp_path / "m.tflite", seq_len=SEQ,
                          auxiliary_inputs="ones", verbose=False)
    assert not (tmp_path / "m.tflite").exists()


def test_distiller_takes_any_teacher_and_student(models, ids):
    distiller = tfc.Distiller(models["gpt2"], models["subclassed"])
    distiller.compile("adam", run_eagerly=True)
    history = distiller.fit(ids, ids, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("family", ("qwen3", "gemma", "mistral", "phi3"))
def test_distiller_default_schedule_on_kerashub_families(family, ids):
    """The default labels weight anneals over the fit whatever the KerasHub family."""
    from tests.llm_zoo_models import zoo_model
    from tfcompress.distill.losses import DEFAULT_LABELS_WEIGHT

    pytest.importorskip("keras_hub")
    teacher, student = zoo_model(family, VOCAB), zoo_model(family, VOCAB, layers=1)
    before = [w.copy() for w in student.get_weights()]
    distiller = tfc.Distiller(teacher, student)
    distiller.compile("adam", run_eagerly=True)
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(float(distiller.labels_weight.numpy())))
    distiller.fit(ids, ids, batch_size=2, epochs=1, verbose=0, callbacks=[probe])
    assert seen == pytest.approx(list(DEFAULT_LABELS_WEIGHT))  # 2 steps: start, then end
    assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights(),
                                                         strict=True))


def test_signature_of_each_kind(models):
    assert signature(models["gpt2"]).auxiliary == ("padding_mask",)
    assert signature(models["subclassed"]).dtype == "int32"
    assert signature(models["conv"]).shape == (None, 8, 8, 3)
    assert signature(models["gpt"]).name is None


def test_tfmot_path_on_a_tf_keras_transformer(ids, tmp_path):
    import tf_keras as K

    from tfcompress.prune import prune_tf_keras, strip_tf_keras, tf_keras_callbacks
    from tfcompress.quantize import tfmot_cluster, tfmot_quantize

    model = tf_keras_transformer(VOCAB, SEQ, width=16, layers=1)
    pruned, skipped = prune_tf_keras(model, sparsity=0.5)
    assert all("TFOpLambda" in why for why in skipped.values()) and skipped
    pruned.compile("adam", K.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(ids, ids, epochs=1, verbose=0, callbacks=tf_keras_callbacks())
    attn = strip_tf_keras(pruned).get_layer("attn0")
    kernels = [w.numpy() for w in attn.weights if "kernel" in w.name]
    assert len(kernels) == 4 and all(np.mean(k == 0) == pytest.approx(0.5) for k in kernels)

    q = tfmot_quantize(model)
    wrapped = {la.name for la in q.layers if type(la).__name__ == "QuantizeWrapperV2"}
    assert wrapped == {"quant_up0", "quant_down0", "quant_head"}
    norms = {"norm0", "mlp_norm0", "norm_f"}
    assert set(q.tfmot_skipped) == {"tok", "pos", "attn0", *norms}
    assert "MultiHeadAttention" in q.tfmot_skipped["attn0"]
    # tf.keras attention masks with -1e9 (tf_keras.layers.Softmax); traced with bounded
    # masks the full-integer file keeps its attention and passes int8's own tolerance
    # (79.7 % next-token agreement < 85 % before)
    x = np.random.default_rng(0).integers(0, VOCAB, (64, SEQ)).astype("int32")
    result = tfc.export_tflite(q, tmp_path / "qat.tflite", "int8", SEQ,
                               calibration=x[:32], sample=x[:16], verbose=False)
    assert result.qat and result.agreement >= 0.85
    clustered = tfmot_cluster(model, clusters=4)
    assert set(clustered.tfmot_skipped) == {"attn0", *norms}

