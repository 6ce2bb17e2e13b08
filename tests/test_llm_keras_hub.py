"""GGUF files and Hugging Face folders of each family into KerasHub CausalLM classes, against
an independent NumPy forward pass of the same random weights (tiny checkpoints written here)."""

import json

import numpy as np
import pytest

import tfcompress  # noqa: F401
from tfcompress.errors import TfcompressError

pytest.importorskip("gguf", reason="gguf is the [llm] extra: pip install .[llm]")
keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is in the [test] extra")

from llm_checkpoints import (  # noqa: E402
    family_config,
    gemma_sentencepiece,
    gguf_tokenizer_fields,
    hf_llama_config,
    random_llama,
    write_gguf,
    write_hf_folder,
)
from llm_reference import np_llama  # noqa: E402

from tfcompress.models.loaders import (  # noqa: E402
    gguf_tokenizer,
    load_gguf,
    load_hf_causal_lm,
    load_safetensors,
)

IDS = np.random.default_rng(1).integers(0, 48, 9)
# family -> (KerasHub task class, tied embeddings in the test checkpoint)
FAMILIES = {"llama": ("LlamaCausalLM", False), "qwen2": ("QwenCausalLM", True),
            "qwen3": ("Qwen3CausalLM", False), "gemma": ("GemmaCausalLM", True),
            "gemma3": ("Gemma3CausalLM", True)}


def logits(causal_lm, ids):
    ids = ids[None].astype("int32")
    return causal_lm({"token_ids": ids, "padding_mask": np.ones_like(ids)}).numpy()[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_and_hf_folder_into_keras_hub_match_numpy(tmp_path, family):
    task, tied = FAMILIES[family]
    c = family_config(family)
    w = random_llama(c, tied=tied, family=family)
    expected = np_llama(w, IDS, c, tied=tied, family=family)
    from_gguf = load_gguf(write_gguf(tmp_path / "m.gguf", w, c, family=family), into="keras_hub")
    assert isinstance(from_gguf, getattr(keras_hub.models, task))
    assert from_gguf.preprocessor is None  # no tokenizer in this file
    np.testing.assert_allclose(logits(from_gguf, IDS), expected, rtol=1e-4, atol=1e-4)
    folder = write_hf_folder(tmp_path / "hf", hf_llama_config(c, tied, family), w)
    from_hf = load_hf_causal_lm(folder, preprocessor=False)
    assert type(from_hf) is type(from_gguf)
    np.testing.assert_allclose(logits(from_hf, IDS), expected, rtol=1e-4, atol=1e-4)


def test_a_kerashub_preset_folder_loads_back_with_the_same_logits(tmp_path):
    # qwen2, tied: KerasHub 0.32's LlamaBackbone leaves tie_word_embeddings out of its config,
    # so a tied Llama (SmolLM2) does not load back from save_to_preset / .keras
    c = family_config("qwen2")
    w = random_llama(c, tied=True, family="qwen2")
    causal_lm = load_gguf(write_gguf(tmp_path / "m.gguf", w, c, family="qwen2"),
                          into="keras_hub")
    causal_lm.save_to_preset(str(tmp_path / "preset"))
    again = load_hf_causal_lm(tmp_path / "preset", preprocessor=False)
    np.testing.assert_array_equal(logits(again, IDS), logits(causal_lm, IDS))
    np.testing.assert_allclose(logits(again, IDS), np_llama(w, IDS, c, family="qwen2"),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gguf_bpe_tokenizer_becomes_the_kerashub_preprocessor(tmp_path, family):
    from tfcompress.data import BPETokenizer

    text = "It is a truth universally acknowledged, that a single man in possession 1818."
    fields = gguf_tokenizer_fields(BPETokenizer.train([text] * 20, vocab_size=300),
                                   specials=("<|endoftext|>", "<|im_start|>"))
    fields = (*fields[:3], "qwen2" if family == "qwen2" else "gpt2")  # llama.cpp's pre names
    c = dict(family_config(family), vocab=len(fields[0]))
    path = write_gguf(tmp_path / "t.gguf", random_llama(c, family=family), c, family=family,
                      tokenizer=fields)
    causal_lm = load_gguf(path, into="keras_hub")
    sample = "a single truth, acknowledged"
    hub_ids = np.asarray(causal_lm.preprocessor.tokenizer(sample))
    np.testing.assert_array_equal(hub_ids, gguf_tokenizer(path).encode(sample))
    if family == "llama":  # the GGUF's BOS / EOS ids are KerasHub's start / end tokens
        assert causal_lm.preprocessor.tokenizer.start_token_id == len(fields[0]) - 1
    else:  # Qwen2's split: one digit per piece
        assert len(gguf_tokenizer(path).encode("1818")) == 4


@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_gguf_sentencepiece_becomes_the_kerashub_gemma_tokenizer(tmp_path, family):
    from sentencepiece import SentencePieceProcessor

    text = "\n".join(["It is a truth universally acknowledged, that a single man in "
                      "possession of a good fortune, must be in want of a wife."] * 30)
    model = gemma_sentencepiece(text)
    c = dict(family_config(family), vocab=SentencePieceProcessor(model_proto=model).vocab_size())
    path = write_gguf(tmp_path / "g.gguf", random_llama(c, family=family), c, family=family,
                      sentencepiece=model)
    causal_lm = load_gguf(path, into="keras_hub")
    sample = "a single truth, acknowledged in Ürümqi 42"  # unseen letters: byte fallback
    expected = SentencePieceProcessor(model_proto=model).encode(sample)
    assert expected.count(3) == 0 and max(expected) < c["vocab"]
    np.testing.assert_array_equal(causal_lm.preprocessor.tokenizer(sample), expected)
    assert causal_lm.preprocessor.tokenizer.start_token_id == 2


def test_bad_gguf_files_and_settings_raise_before_loading(tmp_path):
    c = family_config("llama")
    w = random_llama(c, tied=True)
    with pytest.raises(TfcompressError, match=r"into must be one of \('port', 'keras_hub'\), "
                                              r"got 'hub'"):
        load_gguf(tmp_path / "absent.gguf", into="hub")
    with pytest.raises(TfcompressError, match="general.architecture is 'gpt2'; into='keras_hub'"):
        load_gguf(write_gguf(tmp_path / "a.gguf", w, arch="gpt2"), into="keras_hub")
    with pytest.raises(TfcompressError, match=r"no tensor 'blk\.1\.ffn_up\.weight'"):
        load_gguf(write_gguf(tmp_path / "b.gguf", w, drop=("blk.1.ffn_up.weight",)),
                  into="keras_hub")
    extra = w | {"model.layers.0.self_attn.q_proj.bias": np.zeros(c["d"], np.float32)}
    with pytest.raises(TfcompressError, match=r"no variable for: \['blk\.0\.attn_q\.bias'\]"):
        load_gguf(write_gguf(tmp_path / "c.gguf", extra), into="keras_hub")
    wrong = w | {"model.layers.0.mlp.down_proj.weight": np.zeros((c["d"], 7), np.float32)}
    with pytest.raises(TfcompressError, match=r"'blk\.0\.ffn_down\.weight' gives shape \(7, 32\)"
                                              r", expected \(40, 32\)"):
        load_gguf(write_gguf(tmp_path / "d.gguf", wrong), into="keras_hub")
    g = family_config("gemma") | {"base": 500.0}
    with pytest.raises(TfcompressError, match="gemma.rope.freq_base is 500.0; KerasHub's "
                                              "GemmaBackbone fixes it at 10000.0"):
        load_gguf(write_gguf(tmp_path / "e.gguf", random_llama(g, family="gemma"), g,
                             family="gemma"), into="keras_hub")


def test_bad_hf_folders_and_preset_names_raise_before_loading(tmp_path):
    c = family_config("qwen2")
    w = random_llama(c, tied=True, family="qwen2")
    config = hf_llama_config(c, True, "qwen2")
    for name in ("qwen2.5_0.5b_en", "hf://HuggingFaceTB/SmolLM2-135M"):
        with pytest.raises(TfcompressError, match="needs a download; tfcompress loads offline: "
                                                  "pass a local preset folder"):
            load_safetensors(name, into="keras_hub")
    with pytest.raises(TfcompressError, match="folder 'no_such_folder' does not exist"):
        load_safetensors("no_such_folder", into="keras_hub")
    folder = write_hf_folder(tmp_path / "a", config, w)
    with pytest.raises(TfcompressError, match="has no tokenizer.json, which KerasHub's qwen2 "
                                              "tokenizer needs; pass preprocessor=False"):
        load_safetensors(folder, into="keras_hub")
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    with pytest.raises(TfcompressError, match="model_type is 'bert'; into='keras_hub' reads"):
        load_hf_causal_lm(folder, preprocessor=False)
    del config["use_sliding_window"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TfcompressError, match="KeyError: 'use_sliding_window'"):
        load_hf_causal_lm(folder, preprocessor=False)
    (folder / "model.safetensors").rename(folder / "weights.safetensors")
    with pytest.raises(TfcompressError, match="neither model.safetensors nor "
                                              "model.safetensors.index.json"):
        load_hf_causal_lm(folder, preprocessor=False)
