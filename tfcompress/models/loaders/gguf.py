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

import numpy as np

from tfcompress._extras import require
from tfcompress.core.validation import check_input_file
from tfcompress.errors import TfcompressError
from tfcompress.models.llama import LlamaConfig, assign_weights, build_llama, hf_llama_names

ARCHITECTURES = ("llama",)  # into="port"
INTO = ("port", "keras_hub")
# token_type values in GGUF metadata (llama.cpp's llama_token_type)
CONTROL, USER_DEFINED = 3, 4
# Qwen2's pre-tokenizer split (its tokenizer.json; llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def unpermute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation of an ``(out, in)`` projection.

    Per head, llama.cpp stores rows as interleaved pairs ``(0, h/2), (1, h/2+1), ...``; this
    returns them in the half-split order Hugging Face (and `RotaryAttention`) expects.
    """
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise TfcompressError(f"cannot unpermute a q/k weight of {rows} rows into {n_heads} "
                              "heads: rows must be a multiple of 2 * n_heads")
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def gguf_name_map(arch: str, n_layers: int):
    """``gguf``'s Hugging Face -> GGUF tensor name map for ``arch`` (the one llama.cpp's
    converter uses): ``.get_name("model.layers.3.self_attn.q_proj.weight",
    try_suffixes=(".weight", ".bias"))`` is ``"blk.3.attn_q.weight"``."""
    gguf = require("gguf", extra="llm", feature="reading a GGUF file")

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)


def dequantized(tensor) -> np.ndarray:
    """A tensor of a ``GGUFReader`` as float32 in its row-major ``(out, in)`` shape."""
    gguf = require("gguf", extra="llm", feature="reading a GGUF file")

    w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    return w.reshape([int(n) for n in reversed(tensor.shape)])  # ggml lists dims inner first


def _reader(path: str | Path):
    gguf = require("gguf", extra="llm", feature="reading a GGUF file")

    path = check_input_file(path, "path")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - gguf raises ValueError, struct.error, ...
        raise TfcompressError(f"{str(path)!r} is not a readable GGUF file: {err}") from err


def _field(reader, key: str, default=None, required: bool = True):
    field = reader.fields.get(key)
    if field is None:
        if required and default is None:
            raise TfcompressError(f"GGUF metadata has no {key!r}")
        return default
    return field.contents()


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
        from tfcompress.models.loaders.kerashub import load_gguf_causal_lm

        return load_gguf_causal_lm(path, name=name)
    reader = _reader(path)
    cfg = gguf_config(reader)
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

    model = build_llama(cfg, name=name or "llama")
    to_gguf = gguf_name_map("llama", cfg.n_layers)
    names = {to_gguf.get_name(k, try_suffixes=(".weight",)): v
             for k, v in hf_llama_names(cfg).items()}
    assign_weights(model, tensor, names, source=f"GGUF file {Path(path).name!r}")
    return model


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


def bpe_vocabulary(reader) -> tuple[dict[str, int], list[str], list[str]]:
    """``(token -> id, merges "a b", special tokens)`` of a GGUF byte-level BPE tokenizer;
    control and user-defined tokens are the special ones."""
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens), required=False)
    special = [t for t, ty in zip(tokens, types, strict=True) if ty in (CONTROL, USER_DEFINED)]
    return ({t: i for i, t in enumerate(tokens)}, list(_field(reader, "tokenizer.ggml.merges")),
            special)
