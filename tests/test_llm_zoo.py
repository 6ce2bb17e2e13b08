"""export_llm over every KerasHub CausalLM family (tiny random configs) and a user-registered
decoder: float32 greedy ids equal Keras's, dynamic_int8 follows Keras on real text, LiteRT-LM's
engine decodes what LLMRunner decodes; a model without an adapter is refused with how to add
one."""

import json

import keras
import numpy as np
import pytest

from tests.llm_zoo_models import FAMILIES, decisive, steer_to_text, zoo_model
from tfcompress.errors import TfcompressError
from tfcompress.export.generate import generate
from tfcompress.export.llm import export_llm, keras_logits
from tfcompress.export.llm_runner import LLMRunner
from tfcompress.models import Decoder, register_decoder

pytest.importorskip("ai_edge_litert")
pytest.importorskip("keras_hub")
CACHE, WINDOW, VOCAB = 64, 16, 320
PROMPT = "It is a truth universally"


@pytest.fixture(scope="module")
def austen():
    from tfcompress.data.sources import bundled_corpus
    from tfcompress.data.tokenizers import BPETokenizer

    text = bundled_corpus("austen")
    return BPETokenizer.train([text["train"][:50_000]], vocab_size=VOCAB), text["test"]


@pytest.fixture(scope="module", params=FAMILIES)
def zoo(request, austen, tmp_path_factory):
    """A tiny model of the family (6 layers for Gemma3: local and global ones) and its
    float32 bundle (cache past every sliding window)."""
    tokenizer, _ = austen
    model = decisive(zoo_model(request.param, VOCAB, layers=6 if request.param == "gemma3"
                               else 2, window=WINDOW))
    # LiteRT-LM's engine needs a stop id: one greedy decoding never reaches
    eos = steer_to_text(model, tokenizer)[0]
    folder = tmp_path_factory.mktemp(request.param)
    export_llm(model, folder, prefill_lengths=(8,), cache_length=CACHE, mode="float32",
               tokenizer=tokenizer, special_tokens={"eos": eos}, verify_output=False,
               verbose=False)
    return request.param, model, folder


def test_float32_greedy_ids_equal_keras(zoo, austen):
    family, model, folder = zoo
    prompt = austen[0].encode(PROMPT)
    ours = list(LLMRunner(folder).generate_ids(prompt, max_new_tokens=32))
    theirs = generate(keras_logits(model), prompt, 32)[len(prompt):].tolist()
    assert ours == theirs and len(set(ours)) > 1
    # greedy text of a random model soon cycles: the logits after each token of real text
    # check every position
    ids = np.asarray(austen[0].encode(austen[1][:1000])[:48])
    want = keras_logits(model)(ids[None])[0]
    np.testing.assert_allclose(LLMRunner(folder).logits(ids), want,
                               atol=1e-4 * np.abs(want).max())
    config = json.loads((folder / "llm.json").read_text())["architecture"]
    assert config["kind"] == {"smollm": "llama", "llama3": "llama"}.get(family, family)
    if family in ("mistral", "qwen2", "gemma", "gemma3"):  # the window masks inside the cache
        assert WINDOW in config["window"] and len(prompt) + 32 > WINDOW


def test_dynamic_int8_follows_keras_on_austen_text(zoo, austen, tmp_path):
    family = zoo[0]
    tokenizer, text = austen
    # decisive logits: a random model's near-ties would flip on any rounding
    model = decisive(zoo_model(family, VOCAB, layers=6 if family == "gemma3" else 2,
                               window=WINDOW), embed_std=1.0)
    ids = np.asarray(tokenizer.encode(text[:2000])[:CACHE])
    result = export_llm(model, tmp_path, prefill_lengths=(8,), cache_length=CACHE,
                        mode="dynamic_int8", verify_output=False, verbose=False)
    assert result.tensor_dtypes.get("int8", 0) >= 4  # the layers' matmuls really are int8
    got = LLMRunner(tmp_path).logits(ids)
    want = keras_logits(model)(ids[None])[0]
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.95
    assert len(set(want.argmax(-1))) > 4


def test_litert_lm_engine_decodes_what_llm_runner_decodes(zoo, tmp_path):
    pytest.importorskip("litert_lm_builder")
    engine = pytest.importorskip("litert_lm", reason="LiteRT-LM's engine: pip install "
                                                      ".[litertlm]")
    from tfcompress.export.litertlm import write_litertlm

    _, _, folder = zoo
    path = write_litertlm(folder, tmp_path / "zoo.litertlm")
    with engine.Engine(str(path), max_num_tokens=CACHE) as eng:
        session = eng.create_session(apply_prompt_template=False, max_output_tokens=16,
                                     sampler_config=engine.SamplerConfig(top_k=1))
        session.run_prefill([PROMPT])
        theirs = session.run_decode().texts[0]
    runner = LLMRunner(folder)
    ids = list(runner.generate_ids(runner.encode(PROMPT), max_new_tokens=16))
    assert len(ids) == 16 and len(set(ids)) > 1  # no stop, not one token repeated
    assert theirs == "".join(runner.generate(PROMPT, max_new_tokens=16))


class TinyLM(keras.Model):
    """A user's own decoder (subclassed, not functional): NoPE blocks, LayerNorm, ReLU MLP."""

    def __init__(self, vocab=64, d=32, heads=4, layers=2, **kwargs):
        super().__init__(**kwargs)
        self.d, self.heads = d, heads
        self.embedding = keras.layers.Embedding(vocab, d)
        self.blocks = [[keras.layers.LayerNormalization(), keras.layers.Dense(3 * d),
                        keras.layers.Dense(d), keras.layers.LayerNormalization(),
                        keras.layers.Dense(2 * d, activation="relu"), keras.layers.Dense(d)]
                       for _ in range(layers)]
        self.norm = keras.layers.LayerNormalization()
        self.head = keras.layers.Dense(vocab)

    def call(self, ids):
        x = self.embedding(ids)
        n, hd = keras.ops.shape(ids)[1], self.d // self.heads
        causal = keras.ops.tril(keras.ops.ones((n, n), "bool"))
        for ln1, qkv, out, ln2, up, down in self.blocks:
            q, k, v = (keras.ops.reshape(t, (-1, n, self.heads, hd))
                       for t in keras.ops.split(qkv(ln1(x)), 3, -1))
            scores = keras.ops.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
            probs = keras.ops.softmax(keras.ops.where(causal, scores, -1e9), -1)
            att = keras.ops.einsum("bhqk,bkhd->bqhd", probs, v)
            x = x + out(keras.ops.reshape(att, (-1, n, self.d)))
            x = x + down(up(ln2(x)))
        return self.head(self.norm(x))


class MyTinyLM(TinyLM):
    """Found through the adapter of its base class (the registry walks the MRO)."""


def tiny_lm_adapter(model) -> Decoder:
    hd = model.d // model.heads

    def layer(i, x, step):
        ln1, qkv, out, ln2, up, down = model.blocks[i]
        q, k, v = (keras.ops.reshape(t, (-1, model.heads, hd))
                   for t in keras.ops.split(qkv(ln1(x)), 3, -1))
        step.write(k, v)
        x = x + out(step.attend(q))
        return x + down(up(ln2(x)))

    return Decoder("tiny_lm", model.embedding.input_dim, model.d, len(model.blocks),
                   model.heads, model.heads, hd, 0.0, modules=(model,),
                   embed=lambda tokens, positions: model.embedding(tokens), layer=layer,
                   final_norm=model.norm, head=model.head)


def test_user_registered_decoder_exports_through_its_own_layers(tmp_path):
    register_decoder(TinyLM)(tiny_lm_adapter)
    keras.utils.set_random_seed(0)
    model = MyTinyLM()
    model(np.zeros((1, 4), np.int32))
    decisive(model)
    result = export_llm(model, tmp_path, prefill_lengths=(4,), cache_length=32,
                        mode="float32", verbose=False)
    assert result.agreement == 1.0 and result.relative_error < 1e-4  # export_llm's own check
    config = json.loads((tmp_path / "llm.json").read_text())["architecture"]
    assert config["kind"] == "tiny_lm" and config["custom"] == ["embed", "layer",
                                                                "final_norm", "head"]
    prompt = [3, 1, 4, 1, 5]
    ours = list(LLMRunner(tmp_path).generate_ids(prompt, max_new_tokens=20))
    assert ours == generate(keras_logits(model), prompt, 20)[5:].tolist()
    ids = np.random.default_rng(0).integers(0, 64, 24)
    want = keras_logits(model)(ids[None])[0]
    np.testing.assert_allclose(LLMRunner(tmp_path).logits(ids), want,
                               atol=1e-4 * np.abs(want).max())


class Unknown(keras.Model):
    def call(self, ids):
        return ids


def test_a_model_without_an_adapter_is_refused_with_how_to_register_one(tmp_path):
    with pytest.raises(TfcompressError, match=r"\(Unknown\) is not an architecture export_llm "
                       r"knows .*GemmaCausalLM.*layer\(i, x, step\).*final_norm.*head.*"
                       r"register_decoder\(YourModelClass\)"):
        export_llm(Unknown(), tmp_path / "b", prefill_lengths=(4,), cache_length=8)
    assert not (tmp_path / "b").exists()
    with pytest.raises(TfcompressError, match="register_decoder takes a class .*got 'Unknown'"):
        register_decoder("Unknown")


def test_sliding_window_mask_sees_only_the_last_window_positions():
    import tensorflow as tf

    from tfcompress.export.llm_graph import _mask_bias

    visible = _mask_bias(tf, tf.constant([5, 6]), 8, window=3).numpy() == 0
    assert visible.tolist() == [[False, False, False, True, True, True, False, False],
                                [False, False, False, False, True, True, True, False]]
    # a window the cache cannot exceed: plain causal
    assert (_mask_bias(tf, tf.constant([6]), 8, window=8).numpy() == 0).tolist() == [
        [True] * 7 + [False]]


def test_partial_rotary_and_phi3_long_factors():
    import tensorflow as tf

    from tfcompress.export.llm_graph import CacheStep, _rope_tables
    from tfcompress.models.decoders import Rope

    dec = Decoder("t", 8, 4, 1, 1, 1, 4, 1e-6)
    rope = Rope((1.0,), long_inv_freq=(0.5,), long_after=4)  # rotates 2 of 4 features
    x = tf.constant([[[1.0, 0.0, 5.0, 6.0]]] * 2)
    short = CacheStep(dec, None, None, None, None, _rope_tables(tf, rope, tf.constant([2, 3])))
    np.testing.assert_allclose(short.rotate(x).numpy()[:, 0], [[np.cos(2), np.sin(2), 5, 6],
                                                              [np.cos(3), np.sin(3), 5, 6]],
                               atol=1e-6)
    # a call reaching position 4 (past long_after - 1) uses the long factors: angle 4 * 0.5
    long = CacheStep(dec, None, None, None, None, _rope_tables(tf, rope, tf.constant([4])))
    np.testing.assert_allclose(long.rotate(x[:1]).numpy()[0, 0], [np.cos(2), np.sin(2), 5, 6],
                               atol=1e-6)
