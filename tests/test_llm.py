"""Llama / GPT-2 loaders into our port vs an independent NumPy forward pass on tiny checkpoints
written here."""


import keras
import numpy as np
import pytest

import tfcompress  # noqa: F401
from tfcompress import generate
from tfcompress.errors import TfcompressError
from tfcompress.models import LlamaConfig, build_llama, causal_lm_perplexity
from tfcompress.models.llama import llama_config_of, lm_windows, take_layers

gguf = pytest.importorskip("gguf", reason="gguf is the [llm] extra: pip install .[llm]")
safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors missing")

from llm_checkpoints import (  # noqa: E402
    CFG,
    gguf_tokenizer_fields,
    hf_llama_config,
    llama_cpp_permute,
    random_llama,
    write_gguf,
    write_hf_folder,
)
from llm_reference import np_attend, np_llama  # noqa: E402

from tfcompress.models.loaders import (  # noqa: E402
    gguf_tokenizer,
    hf_tokenizer,
    load_gguf,
    load_safetensors,
    unpermute_qk,
)

RNG = np.random.default_rng(0)


IDS = RNG.integers(0, CFG["vocab"], 11)


# ---------------------------------------------------------------- tests
def test_unpermute_inverts_llama_cpp_permutation():
    w = RNG.standard_normal((3 * 8, 5))
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(w, 3), 3), w)
    assert not np.array_equal(llama_cpp_permute(w, 3), w)
    with pytest.raises(TfcompressError, match="multiple of 2 \\* n_heads"):
        unpermute_qk(np.zeros((10, 4)), 3)


def test_gguf_forward_matches_numpy(tmp_path):
    w = random_llama(tied=True)
    model = load_gguf(write_gguf(tmp_path / "tiny.gguf", w, embed_q8=True))
    q8 = gguf.GGMLQuantizationType.Q8_0
    emb = w["model.embed_tokens.weight"]
    w["model.embed_tokens.weight"] = gguf.quants.dequantize(gguf.quants.quantize(emb, q8), q8)
    expected = np_llama(w, IDS)
    got = model(IDS[None].astype("int32")).numpy()[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert "lm_head" not in [la.name for la in model.layers]


def test_safetensors_llama_untied_matches_numpy_and_roundtrips(tmp_path):
    w = random_llama(tied=False)
    w["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)  # ignored extra
    model = load_safetensors(write_hf_folder(tmp_path / "hf", hf_llama_config(), w))
    got = model(IDS[None].astype("int32")).numpy()[0]
    np.testing.assert_allclose(got, np_llama(w, IDS, tied=False), rtol=1e-4, atol=1e-4)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again(IDS[None].astype("int32")).numpy()[0], got, atol=1e-6)


def np_gpt2(w, ids, d, n_heads, eps=1e-5):
    def ln(x, g, b):
        m = x.mean(-1, keepdims=True)
        return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * g + b

    x = w["wte.weight"][ids] + w["wpe.weight"][: len(ids)]
    i = 0
    while f"h.{i}.ln_1.weight" in w:
        p = f"h.{i}."
        h = ln(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (qkv[:, j * d:(j + 1) * d].reshape(len(ids), n_heads, -1).transpose(1, 0, 2)
                   for j in range(3))
        x = x + np_attend(q, k, v) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = ln(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        i += 1
    return ln(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["wte.weight"].T


def test_safetensors_gpt2_matches_numpy(tmp_path):
    d, n_heads, vocab, pos = 16, 2, 40, 24

    def r(*shape):
        return (RNG.standard_normal(shape) * 0.3).astype(np.float32)

    w = {"wte.weight": r(vocab, d), "wpe.weight": r(pos, d), "ln_f.weight": 1 + r(d),
         "ln_f.bias": r(d)}
    for i in range(2):
        p = f"h.{i}."
        w |= {p + "ln_1.weight": 1 + r(d), p + "ln_1.bias": r(d), p + "ln_2.weight": 1 + r(d),
              p + "ln_2.bias": r(d), p + "attn.c_attn.weight": r(d, 3 * d),
              p + "attn.c_attn.bias": r(3 * d), p + "attn.c_proj.weight": r(d, d),
              p + "attn.c_proj.bias": r(d), p + "mlp.c_fc.weight": r(d, 4 * d),
              p + "mlp.c_fc.bias": r(4 * d), p + "mlp.c_proj.weight": r(4 * d, d),
              p + "mlp.c_proj.bias": r(d)}
    config = {"model_type": "gpt2", "vocab_size": vocab, "n_embd": d, "n_layer": 2,
              "n_head": n_heads, "n_positions": pos}
    stored = {"transformer." + k: v for k, v in w.items()}
    model = load_safetensors(write_hf_folder(tmp_path / "gpt2", config, stored))
    ids = RNG.integers(0, vocab, 9)
    got = model(ids[None].astype("int32")).numpy()[0]
    np.testing.assert_allclose(got, np_gpt2(w, ids, d, n_heads), rtol=1e-4, atol=1e-4)

    bad = dict(stored)
    bad["transformer.h.1.attn.c_attn.weight"] = r(d, 2 * d)
    with pytest.raises(TfcompressError, match=r"h\.1\.attn\.c_attn\.weight.*shape"):
        load_safetensors(write_hf_folder(tmp_path / "bad", config, bad))


def test_missing_tensor_shape_mismatch_and_architecture_errors(tmp_path):
    w = random_llama(tied=True)
    with pytest.raises(TfcompressError, match=r"no tensor 'blk\.1\.ffn_up\.weight'"):
        load_gguf(write_gguf(tmp_path / "a.gguf", w, drop=("blk.1.ffn_up.weight",)))
    with pytest.raises(TfcompressError, match="general.architecture is 'gpt2'"):
        load_gguf(write_gguf(tmp_path / "b.gguf", w, arch="gpt2"))
    wrong = dict(w)
    wrong["model.layers.0.mlp.down_proj.weight"] = np.zeros((CFG["d"], 7), np.float32)
    with pytest.raises(TfcompressError, match=r"'model\.layers\.0\.mlp\.down_proj\.weight'.*"
                                              r"shape \(32, 7\), expected \(32, 40\)"):
        load_safetensors(write_hf_folder(tmp_path / "c", hf_llama_config(tied=True), wrong))
    config = hf_llama_config() | {"model_type": "bert"}
    with pytest.raises(TfcompressError, match="model_type is 'bert'"):
        load_safetensors(write_hf_folder(tmp_path / "d", config, w))
    with pytest.raises(TfcompressError, match="no config.json"):
        load_safetensors(tmp_path)
    with pytest.raises(TfcompressError, match="nothing.gguf. does not exist"):
        load_gguf(tmp_path / "nothing.gguf")


def test_gguf_tokenizer_matches_the_tokenizer_it_was_written_from(tmp_path):
    from tfcompress.data import BPETokenizer

    text = "It is a truth universally acknowledged, that a single man in possession 1818."
    source = BPETokenizer.train([text] * 20, vocab_size=300)
    fields = gguf_tokenizer_fields(source)
    vocab = fields[0]
    path = write_gguf(tmp_path / "t.gguf", random_llama(), tokenizer=fields)
    tok = gguf_tokenizer(path)
    sample = "a single truth, acknowledged 2024"
    np.testing.assert_array_equal(tok.encode(sample), source.encode(sample))
    assert tok.decode(tok.encode(sample)) == sample
    assert tok.encode("<|im_start|>a").tolist()[0] == len(vocab) - 1
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.json").write_text(source.to_json())
    np.testing.assert_array_equal(hf_tokenizer(tmp_path / "hf").encode(sample),
                                  source.encode(sample))


def test_lm_windows_score_every_token_once_and_generation_ignores_padding():
    ids = np.arange(10)
    wins = lm_windows(ids, 4)
    np.testing.assert_array_equal(np.concatenate([t[0] for _, t in wins]), ids[1:])
    assert all(x.shape == t.shape for x, t in wins)
    with pytest.raises(TfcompressError, match="window"):
        lm_windows(ids, 0)
    cfg = LlamaConfig(vocab_size=30, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=24)
    model = build_llama(cfg)
    assert model.count_params() == cfg.param_count()

    def forward(x):
        return model(x).numpy()

    prompt = [3, 7, 1]
    np.testing.assert_array_equal(generate(forward, prompt, 5),
                                  generate(forward, prompt, 5, seq_len=12))
    uniform = causal_lm_perplexity(lambda x: np.zeros((*x.shape, 30)), np.arange(9) % 30, 3)
    assert uniform["perplexity"] == pytest.approx(30.0) and uniform["tokens"] == 8
    with pytest.raises(TfcompressError, match="n_heads .* multiple of n_kv_heads"):
        LlamaConfig(n_heads=4, n_kv_heads=3)


def test_take_layers_copies_chosen_blocks_and_reads_config_back():
    cfg = LlamaConfig(vocab_size=30, d_model=16, n_layers=4, n_heads=2, n_kv_heads=1, d_ff=24,
                      rope_base=300.0, tie_embeddings=False)
    model = build_llama(cfg)
    assert llama_config_of(model) == cfg
    student = take_layers(model, [1, 3])
    assert llama_config_of(student).n_layers == 2
    for layer in ("block1_mlp_up", "block1_attn_q"):
        np.testing.assert_array_equal(student.get_layer(layer).kernel.numpy(),
                                      model.get_layer(layer.replace("1", "3")).kernel.numpy())
    np.testing.assert_array_equal(student.get_layer("lm_head").kernel.numpy(),
                                  model.get_layer("lm_head").kernel.numpy())
    with pytest.raises(TfcompressError, match="keep must list block indices in \\[0, 4\\)"):
        take_layers(model, [0, 4])
    with pytest.raises(TfcompressError, match="not made by build_llama"):
        llama_config_of(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))


def test_eager_attention_of_long_sequences_runs_a_graph_with_the_eager_values():
    from tfcompress.models.llama import GRAPH_FROM, RotaryAttention, _graph_attention

    att = RotaryAttention(n_heads=6, n_kv_heads=2, head_dim=8)
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(2, GRAPH_FROM + 3, h, 8)).astype("float32") for h in (6, 2, 2))
    graph = _graph_attention(6, 2, 8)
    traces = graph.experimental_get_tracing_count()
    out = att.attend(q, k, v).numpy()
    assert graph.experimental_get_tracing_count() == traces + 1  # one trace, both sequences
    for i in range(2):  # the ops one by one, eagerly: the same values, rounded its own way
        np.testing.assert_allclose(out[i:i + 1], att._attend(q[i:i + 1], k[i:i + 1],
                                                             v[i:i + 1], 0).numpy(), atol=1e-6)
    short = att.attend(q[:, :GRAPH_FROM - 1], k[:, :GRAPH_FROM - 1], v[:, :GRAPH_FROM - 1])
    assert graph.experimental_get_tracing_count() == traces + 1  # shorter: eager
    np.testing.assert_allclose(short.numpy()[0], out[0, :GRAPH_FROM - 1], atol=1e-6)  # causal


def test_eager_attention_runs_a_batch_one_sequence_at_a_time_with_the_same_values():
    import tensorflow as tf

    from tfcompress.models.llama import RotaryAttention

    att = RotaryAttention(n_heads=4, n_kv_heads=2, head_dim=8)
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(3, 10, h, 8)).astype("float32") for h in (4, 2, 2))
    calls = []
    one = att._attend
    att._attend = lambda *a: calls.append(a[0].shape[0]) or one(*a)
    eager = att.attend(q, k, v).numpy()
    assert calls == [1, 1, 1]  # eagerly: a sequence at a time
    traced = tf.function(lambda *t: att.attend(*t))(q, k, v).numpy()
    assert calls[3:] == [3]  # traced into a graph: the batch at once
    np.testing.assert_array_equal(eager, one(q, k, v, 0).numpy())  # the batch, eagerly
    np.testing.assert_allclose(eager, traced, atol=1e-6)  # a graph rounds its own way
    heads = [np.repeat(t[1], 2, axis=1).transpose(1, 0, 2) if t is not q else t[1].transpose(
        1, 0, 2) for t in (q, k, v)]  # each KV head serves two query heads
    np.testing.assert_allclose(eager[1], np_attend(*heads), atol=1e-5)
