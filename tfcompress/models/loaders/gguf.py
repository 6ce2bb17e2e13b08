"""GGUF files (llama.cpp) -> Keras 3 models (our `build_llama` port, or KerasHub), tokenizers.

Quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 with the PyPI ``gguf`` package,
one tensor at a time. llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` so
its interleaved RoPE matches Hugging Face's half-split one; `unpermute_qk` undoes that.

Example:
    >>> model = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")                 # build_llama
    >>> causal_lm = load_gguf("qwen2.5-0.5b.gguf", into="keras_hub")          # QwenCausalLM
    >>> tokenizer = gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")
"""

from __future__ import annotations

from pathlib import Path

from tfcompress.core.memory import release_freed_memory
from tfcompress.errors import TfcompressError
from tfcompress.models.llama import LlamaConfig, assign_weights, build_llama, hf_llama_names
from tfcompress.models.loaders.kerashub import load_gguf_causal_lm
from tfcompress.models.loaders.readers import (
    _field,
    _reader,
    bpe_vocabulary,
    dequantized,
    gguf_name_map,
    unpermute_qk,
)

ARCHITECTURES = ("llama",)  # into="port"
INTO = ("port", "keras_hub")
# Qwen2's pre-tokenizer split (its tokenizer.json; llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def gguf_config(path_or_reader) -> LlamaConfig:
    """The `LlamaConfig` described by a GGUF file's metadata (Llama architecture only)."""
    reader = path_or_reader if hasattr(path_or_reader, "fields") else _reader(path_or_reader)
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise TfcompressError(f"GGUF general.architecture is {arch!r}; this loader reads "
                              f"{ARCHITECTURES}")
    names = {t.name for t in reader.tensors}
    n_heads = int(_field(reader, f"{arch}.attention.head_count"))
    d_model = int(_field(reader, f"{arch}.embedding_length"))
    head_dim = int(_field(reader, f"{arch}.rope.dimension_count", d_model // n_heads))
    vocab = _field(reader, f"{arch}.vocab_size", required=False)
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    return LlamaConfig(
        vocab_size=int(vocab),
        d_model=d_model,
        n_layers=int(_field(reader, f"{arch}.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
        d_ff=int(_field(reader, f"{arch}.feed_forward_length")),
        head_dim=head_dim,
        rms_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_base=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        tie_embeddings="output.weight" not in names,
    )


def load_gguf(path: str | Path, name: str | None = None, into: str = "port"):
    """A float32 Keras model with the weights of a GGUF file.

    ``into="port"`` (default): our `build_llama` model, for ``llama`` files (named ``name``,
    default ``"llama"``). ``into="keras_hub"``: a KerasHub ``CausalLM`` for ``llama``,
    ``qwen2``, ``qwen3``, ``gemma`` and ``gemma3`` files, with its preprocessor where the
    file's tokenizer allows (see `load_gguf_causal_lm`).

    Raises `TfcompressError` naming the tensor when one is missing or has the wrong shape,
    or naming the architecture when the file is not one ``into`` reads.
    """
    if into not in INTO:
        raise TfcompressError(f"into must be one of {INTO}, got {into!r}")
    if into == "keras_hub":
        return load_gguf_causal_lm(path, name=name)
    reader = _reader(path)
    cfg = gguf_config(reader)
    model = build_llama(cfg, name=name or "llama")
    to_gguf = gguf_llama_names(cfg)
    names = {to_gguf[k]: v for k, v in hf_llama_names(cfg).items()}
    assign_weights(model, gguf_tensors(reader, cfg), names,
                   source=f"GGUF file {Path(path).name!r}")
    release_freed_memory()  # the dequantized tensors, copied into the model's variables
    return model


def gguf_llama_names(cfg: LlamaConfig) -> dict[str, str]:
    """Hugging Face Llama tensor name -> its GGUF name (``model.layers.3.mlp.up_proj.weight``
    -> ``blk.3.ffn_up.weight``) for every tensor of `hf_llama_names`."""
    to_gguf = gguf_name_map("llama", cfg.n_layers)
    return {k: to_gguf.get_name(k, try_suffixes=(".weight",)) for k in hf_llama_names(cfg)}


def gguf_tensors(reader, cfg: LlamaConfig):
    """``tensor(gguf_name)``: a Llama GGUF tensor as float32 ``(out, in)`` in Hugging Face's
    layout (dequantized, q/k rows un-permuted), None when absent; read when asked.

    Example:
        >>> tensor = gguf_tensors(reader, gguf_config(reader))
        >>> tensor("blk.0.attn_q.weight").shape
    """
    by_name = {t.name: t for t in reader.tensors}

    def tensor(gguf_name: str):
        t = by_name.get(gguf_name)
        if t is None:
            return None
        w = dequantized(t)
        if gguf_name.endswith("attn_q.weight"):
            w = unpermute_qk(w, cfg.n_heads)
        elif gguf_name.endswith("attn_k.weight"):
            w = unpermute_qk(w, cfg.n_kv_heads)
        return w

    return tensor


def gguf_tokenizer(path: str | Path):
    """The byte-level BPE tokenizer stored in a GGUF file's metadata, as a `BPETokenizer`.

    Control and user-defined tokens (``<|im_start|>`` ...) become special tokens. The
    pre-tokenizer follows ``tokenizer.ggml.pre`` (``smollm``: single digits, then GPT-2's
    byte-level split; ``gpt2`` / ``default``: GPT-2's split; ``qwen2``: Qwen2's regex, one
    digit per piece, then byte-level).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    from tfcompress.data.tokenizers import BPETokenizer

    reader = _reader(path)
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise TfcompressError(f"GGUF tokenizer.ggml.model is {kind!r}; only byte-level BPE "
                              "('gpt2') tokenizers are supported")
    pre = _field(reader, "tokenizer.ggml.pre", "default", required=False)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    qwen2 = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated")
    splitters = {"smollm": [pre_tokenizers.Digits(individual_digits=True), byte_level],
                 "gpt2": [byte_level], "default": [byte_level],
                 "qwen2": [qwen2, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                           use_regex=False)]}
    if pre not in splitters:
        raise TfcompressError(f"GGUF tokenizer.ggml.pre {pre!r} is not supported: "
                              f"choose one of {sorted(splitters)}")
    vocab, merges, special = bpe_vocabulary(reader)
    tok = Tokenizer(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(splitters[pre])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in special])
    return BPETokenizer(tok)
