"""Tiny random Llama checkpoints in the files real ones come in: llama.cpp GGUF (with a BPE
tokenizer) and Hugging Face safetensors folders. Used by the loader tests and by
``python -m benchmarks.llm --quick``; needs the ``[llm]`` extra (gguf, safetensors).

Example:
    >>> path = write_tiny_gguf("tiny.gguf", text)  # a 4-block Llama and a 300-token BPE
"""

import json
from pathlib import Path

import numpy as np

CFG = dict(vocab=48, d=32, layers=2, heads=4, kv=2, ff=40, eps=1e-5, base=500.0)
RNG = np.random.default_rng(0)


GEMMAS = ("gemma", "gemma3")


def family_config(family: str) -> dict:
    """`CFG` adapted to a family: an explicit head width that is not ``d / heads`` where the
    family allows one, the RoPE bases KerasHub's Gemma backbones hard-code, and an RMSNorm
    epsilon large enough that a loader dropping it changes the logits. Qwen3 and the Gemmas
    keep the small ones KerasHub 0.32 fixes in some of their norms (Qwen3's q/k norms 1e-5,
    Gemma's decoder blocks and Gemma3's q/k norms 1e-6)."""
    c = dict(CFG, eps=0.05)
    return {"llama": c, "qwen2": c, "qwen3": dict(c, head_dim=12, eps=1e-5),
            "gemma": dict(c, head_dim=12, base=10_000.0, eps=1e-6),
            "gemma3": dict(c, head_dim=12, base=1_000_000.0, window=64, eps=1e-6)}[family]


def random_llama(c=CFG, tied=True, family="llama"):
    """Random Hugging Face-named weights of a ``family`` decoder (llama, qwen2: q/k/v
    biases, qwen3: q/k norms, gemma: norms stored as ``w`` for ``1 + w``, gemma3: also
    q/k norms and norms after attention and MLP)."""
    d, f, v = c["d"], c["ff"], c["vocab"]
    hd = c.get("head_dim", d // c["heads"])
    gemma = family in GEMMAS

    def r(*shape, scale=0.2):
        return (RNG.standard_normal(shape) * scale).astype(np.float32)

    def norm(n):
        return r(n) if gemma else 1 + r(n)

    w = {"model.embed_tokens.weight": r(v, d, scale=1.0), "model.norm.weight": norm(d)}
    if not tied:
        w["lm_head.weight"] = r(v, d)
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": norm(d), p + "post_attention_layernorm.weight":
              norm(d), p + "self_attn.q_proj.weight": r(c["heads"] * hd, d),
              p + "self_attn.k_proj.weight": r(c["kv"] * hd, d),
              p + "self_attn.v_proj.weight": r(c["kv"] * hd, d),
              p + "self_attn.o_proj.weight": r(d, c["heads"] * hd),
              p + "mlp.gate_proj.weight": r(f, d), p + "mlp.up_proj.weight": r(f, d),
              p + "mlp.down_proj.weight": r(d, f)}
        if family == "qwen2":
            w |= {p + f"self_attn.{x}_proj.bias": r(n * hd)
                  for x, n in (("q", c["heads"]), ("k", c["kv"]), ("v", c["kv"]))}
        if family in ("qwen3", "gemma3"):
            w |= {p + "self_attn.q_norm.weight": norm(hd), p + "self_attn.k_norm.weight": norm(hd)}
        if family == "gemma3":
            w |= {p + "pre_feedforward_layernorm.weight": norm(d),
                  p + "post_feedforward_layernorm.weight": norm(d)}
    return w


def llama_cpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf's q/k permutation (half-split -> interleaved pairs)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(path, w, c=CFG, arch=None, drop=(), tokenizer=None, embed_q8=False,
               family="llama", sentencepiece=None):
    """A GGUF of HF weights ``w`` as llama.cpp's convert_hf_to_gguf writes a ``family``
    model: gguf's tensor names, q/k permuted (llama), norms stored as ``1 + w`` (Gemma).
    ``arch`` (default ``family``) is the architecture written in the metadata; ``tokenizer``
    (`gguf_tokenizer_fields`) or ``sentencepiece`` (a serialized SentencePiece model) the
    tokenizer, as llama.cpp stores each."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch or family)
    writer.add_block_count(c["layers"])
    writer.add_context_length(64)
    writer.add_embedding_length(c["d"])
    writer.add_feed_forward_length(c["ff"])
    writer.add_head_count(c["heads"])
    writer.add_head_count_kv(c["kv"])
    writer.add_layer_norm_rms_eps(c["eps"])
    writer.add_rope_freq_base(c["base"])
    writer.add_vocab_size(c["vocab"])
    if "head_dim" in c:
        writer.add_key_length(c["head_dim"])
        writer.add_value_length(c["head_dim"])
    if "window" in c:
        writer.add_sliding_window(c["window"])
    if tokenizer is not None:
        vocab, merges, types, pre = tokenizer
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(vocab)
        writer.add_token_merges(merges)
        writer.add_token_types(types)
        writer.add_bos_token_id(len(vocab) - 1)
        writer.add_eos_token_id(len(vocab) - 1)
    if sentencepiece is not None:
        from sentencepiece import SentencePieceProcessor

        sp = SentencePieceProcessor(model_proto=sentencepiece)
        ids = range(sp.get_piece_size())
        writer.add_tokenizer_model("llama")
        writer.add_token_list([sp.id_to_piece(i) for i in ids])
        writer.add_token_scores([sp.get_score(i) for i in ids])
        writer.add_token_types([6 if sp.is_byte(i) else 3 if sp.is_control(i) else 2
                                if sp.is_unknown(i) else 1 for i in ids])
        writer.add_add_space_prefix(False)
        writer.add_bos_token_id(sp.bos_id())
        writer.add_eos_token_id(sp.eos_id())
        writer.add_unk_token_id(sp.unk_id())
        writer.add_pad_token_id(sp.pad_id())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.upper()], c["layers"])
    for name, value in w.items():
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname in drop:
            continue
        if family == "llama" and "attn_q.weight" in gname:
            value = llama_cpp_permute(value, c["heads"])
        elif family == "llama" and "attn_k.weight" in gname:
            value = llama_cpp_permute(value, c["kv"])
        if family in GEMMAS and name.endswith("norm.weight"):
            value = value + 1
        if embed_q8 and gname == "token_embd.weight":
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gname, gguf.quants.quantize(value, q8),
                              raw_dtype=q8)
        else:
            writer.add_tensor(gname, np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_hf_folder(folder, config, tensors):
    from safetensors import numpy as safetensors_numpy

    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                                str(folder / "model.safetensors"))
    return folder


def hf_llama_config(c=CFG, tied=False, family="llama"):
    """The ``config.json`` of a Hugging Face ``family`` folder (`random_llama` weights)."""
    config = {"model_type": family, "vocab_size": c["vocab"], "hidden_size": c["d"],
              "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"],
              "num_key_value_heads": c["kv"], "intermediate_size": c["ff"],
              "rms_norm_eps": c["eps"], "rope_theta": c["base"], "tie_word_embeddings": tied,
              "hidden_act": "gelu_pytorch_tanh" if family in GEMMAS else "silu",
              "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                 "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM",
                                 "gemma3": "Gemma3ForCausalLM"}[family]]}
    if "head_dim" in c:
        config["head_dim"] = c["head_dim"]
    if family in ("qwen2", "qwen3"):
        config |= {"use_sliding_window": False, "sliding_window": None}
    if family == "gemma3":
        config |= {"model_type": "gemma3_text", "sliding_window": c["window"],
                   "query_pre_attn_scalar": c["head_dim"]}
    return config


def gguf_tokenizer_fields(tokenizer, specials=("<|im_start|>",)) -> tuple:
    """``(vocab, merges, token types, pre)`` of a byte-level BPE for `write_gguf`, with the
    control tokens ``specials`` appended (the last one is written as BOS and EOS)."""
    spec = json.loads(tokenizer.to_json())["model"]
    vocab = sorted(spec["vocab"], key=spec["vocab"].get) + list(specials)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    return vocab, merges, [1] * (len(vocab) - len(specials)) + [3] * len(specials), "gpt2"


def gemma_sentencepiece(text: str, vocab_size: int = 300) -> bytes:
    """A serialized BPE SentencePiece model trained on ``text`` with Gemma's settings (byte
    fallback, no normalization or dummy prefix, ``<pad> <eos> <bos> <unk>`` as ids 0-3)."""
    import io

    from sentencepiece import SentencePieceTrainer

    model = io.BytesIO()
    SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=model, model_type="bpe",
        vocab_size=vocab_size, byte_fallback=True, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, pad_id=0,
        eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", minloglevel=2)
    return model.getvalue()


def write_tiny_gguf(path: str | Path, text: str, layers: int = 4, vocab_size: int = 300,
                    pre: str = "gpt2") -> Path:
    """A random ``layers``-block Llama GGUF whose tokenizer is a BPE trained on ``text``
    (``pre``: its ``tokenizer.ggml.pre``; llama.cpp loads ``"default"``, not ``"gpt2"``)."""
    from tfcompress.data import BPETokenizer

    fields = gguf_tokenizer_fields(BPETokenizer.train([text], vocab_size=vocab_size))
    fields = (*fields[:3], pre)
    c = dict(CFG, vocab=len(fields[0]), layers=layers, d=64, ff=96)
    return write_gguf(Path(path), random_llama(c), c, tokenizer=fields)


def tiny_causal_lm(kind: str, vocab: int, seq_len: int, layers: int, hidden: int, heads: int,
                   kv_heads: int, head_dim: int):
    """A small random KerasHub ``GPT2CausalLM`` / ``LlamaCausalLM`` / ``GemmaCausalLM``
    (``kind``: "gpt2", "llama", "gemma"), no preprocessor: token ids and padding mask in."""
    import keras_hub

    hub = dict(vocabulary_size=vocab, num_layers=layers, hidden_dim=hidden,
               intermediate_dim=2 * hidden)
    if kind == "gpt2":
        backbone = keras_hub.models.GPT2Backbone(num_heads=heads, max_sequence_length=seq_len,
                                                 **hub)
        return keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
    if kind == "llama":
        backbone = keras_hub.models.LlamaBackbone(num_query_heads=heads,
                                                  num_key_value_heads=kv_heads, **hub)
        return keras_hub.models.LlamaCausalLM(backbone, preprocessor=None)
    backbone = keras_hub.models.GemmaBackbone(num_query_heads=heads, num_key_value_heads=kv_heads,
                                              head_dim=head_dim, **hub)
    return keras_hub.models.GemmaCausalLM(backbone, preprocessor=None)


def tf_keras_transformer(vocab: int, seq_len: int, width: int, layers: int, heads: int = 2):
    """A tf.keras (Keras 2) causal LM as users write them for TF-MOT: positions from
    ``tf.range`` and residual adds (TFOpLambda layers), pre-norm ``MultiHeadAttention`` and a
    ReLU MLP per block (``norm{i}``, ``attn{i}``, ``mlp_norm{i}``, ``up{i}``, ``down{i}``),
    then ``norm_f`` and ``head``."""
    import tensorflow as tf
    import tf_keras as K

    K.utils.set_random_seed(0)
    ids = K.Input((seq_len,), dtype="int32")
    x = K.layers.Embedding(vocab, width, name="tok")(ids)
    x = x + K.layers.Embedding(seq_len, width, name="pos")(tf.range(tf.shape(ids)[1]))
    for i in range(layers):
        h = K.layers.LayerNormalization(name=f"norm{i}")(x)
        x = x + K.layers.MultiHeadAttention(heads, width // heads, name=f"attn{i}")(
            h, h, use_causal_mask=True)
        h = K.layers.LayerNormalization(name=f"mlp_norm{i}")(x)
        h = K.layers.Dense(4 * width, activation="relu", name=f"up{i}")(h)
        x = x + K.layers.Dense(width, name=f"down{i}")(h)
    x = K.layers.LayerNormalization(name="norm_f")(x)
    return K.Model(ids, K.layers.Dense(vocab, name="head")(x))
