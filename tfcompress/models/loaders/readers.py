"""Reading checkpoint files without building a model: a GGUF file's metadata fields,
tensors (dequantized) and BPE vocabulary, a Hugging Face folder's ``config.json``. Shared by
the port loaders (`gguf`, `safetensors`) and the KerasHub one (`kerashub`).

Example:
    >>> reader = _reader("SmolLM2-135M-Instruct.Q4_1.gguf")
    >>> _field(reader, "llama.block_count"), dequantized(reader.tensors[0]).shape
    >>> read_config("path/to/SmolLM2-135M")["model_type"]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfcompress._extras import require
from tfcompress.core.validation import check_input_file, reading
from tfcompress.errors import TfcompressError

# token_type values in GGUF metadata (llama.cpp's llama_token_type)
CONTROL, USER_DEFINED = 3, 4


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


def bpe_vocabulary(reader) -> tuple[dict[str, int], list[str], list[str]]:
    """``(token -> id, merges "a b", special tokens)`` of a GGUF byte-level BPE tokenizer;
    control and user-defined tokens are the special ones."""
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens), required=False)
    special = [t for t, ty in zip(tokens, types, strict=True) if ty in (CONTROL, USER_DEFINED)]
    return ({t: i for i, t in enumerate(tokens)}, list(_field(reader, "tokenizer.ggml.merges")),
            special)


def read_config(folder: str | Path) -> dict:
    """The ``config.json`` of a Hugging Face-format folder."""
    folder = check_input_file(folder, "folder", folder=True)
    if not (folder / "config.json").is_file():
        raise TfcompressError(f"folder {str(folder)!r} has no config.json: give a Hugging Face "
                              "model folder (config.json + *.safetensors)")
    with reading(folder / "config.json", "a JSON config"):
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise TfcompressError(f"{str(folder / 'config.json')!r} must hold a JSON object, got "
                              f"{type(config).__name__}")
    return config
