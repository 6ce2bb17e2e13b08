"""Hugging Face-format folders (``config.json`` + ``*.safetensors``) -> Keras 3 models.

``model_type`` ``llama`` (and Llama-shaped ``mistral`` without sliding windows) builds
`build_llama`; ``gpt2`` builds `build_gpt` (tied head, tanh-approximate GELU as in GPT-2);
``into="keras_hub"`` hands the folder to KerasHub's own converter (`load_hf_causal_lm`).
Tensors are read one at a time with the ``safetensors`` package; nothing is downloaded.

Example:
    >>> model = load_safetensors("path/to/SmolLM2-135M")      # folder holding config.json
    >>> tokenizer = hf_tokenizer("path/to/SmolLM2-135M")      # its tokenizer.json
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from tfcompress._extras import require
from tfcompress.core.validation import check_input_file, reading
from tfcompress.errors import TfcompressError
from tfcompress.models.gpt import GPTConfig, build_gpt
from tfcompress.models.llama import LlamaConfig, assign_weights, build_llama, hf_llama_names
from tfcompress.models.loaders.gguf import INTO
from tfcompress.models.loaders.kerashub import load_hf_causal_lm
from tfcompress.models.loaders.readers import read_config

LLAMA_TYPES = ("llama", "mistral")
GPT2_TYPES = ("gpt2",)


@keras.saving.register_keras_serializable(package="tfcompress")
def gelu_tanh(x):
    """GPT-2's GELU (tanh approximation)."""
    return keras.activations.gelu(x, approximate=True)


class TensorIndex:
    """Lazy access to the tensors of every ``*.safetensors`` file in a folder, by name.

    ``keep_open=False`` maps a file only while one tensor is copied out of it: the pages
    read then leave the process (a checkpoint larger than memory is read block by block
    without its resident size growing to the whole file).
    """

    def __init__(self, folder: str | Path, strip_prefix: str = "", keep_open: bool = True):
        self._open = require("safetensors", extra="llm", feature="load_safetensors").safe_open
        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise TfcompressError(f"folder {str(folder)!r} holds no *.safetensors file")
        self._files, self._where = {}, {}
        for file in files:
            check_input_file(file, "safetensors file")
            with reading(file, "a safetensors file (truncated or not safetensors?)"):
                handle = self._open(str(file), framework="numpy")
            self._files[file.name] = handle if keep_open else file
            for name in handle.keys():
                key = name[len(strip_prefix):] if name.startswith(strip_prefix) else name
                self._where[key] = (file.name, name)
            del handle

    def names(self) -> list[str]:
        """Every tensor name (prefix stripped)."""
        return list(self._where)

    def __call__(self, name: str) -> np.ndarray | None:
        if name not in self._where:
            return None
        file, stored = self._where[name]
        handle = self._files[file]
        try:
            if isinstance(handle, Path):
                with self._open(str(handle), framework="numpy") as opened:
                    return opened.get_tensor(stored)
            return handle.get_tensor(stored)
        except TypeError as err:
            raise TfcompressError(f"tensor {stored!r} in {file} has a dtype numpy cannot read "
                                  f"({err}); save the checkpoint as float32 or float16") from err


def llama_config_from_hf(config: dict) -> LlamaConfig:
    """`LlamaConfig` from a Hugging Face Llama ``config.json`` dict, refusing what it lacks."""
    if config.get("hidden_act", "silu") != "silu":
        raise TfcompressError(f"config.json hidden_act is {config['hidden_act']!r}; "
                              "only 'silu' (SwiGLU) is supported")
    if config.get("rope_scaling"):
        raise TfcompressError(f"config.json rope_scaling {config['rope_scaling']!r} is not "
                              "supported: only plain RoPE")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise TfcompressError(f"config.json {flag} is true; biases are not supported")
    if config.get("sliding_window"):
        raise TfcompressError("config.json sliding_window is set; only full attention is "
                              "supported")
    n_heads = config["num_attention_heads"]
    return LlamaConfig(
        vocab_size=config["vocab_size"],
        d_model=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        d_ff=config["intermediate_size"],
        head_dim=config.get("head_dim"),
        rms_eps=config.get("rms_norm_eps", 1e-6),
        rope_base=config.get("rope_theta", 10000.0),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def gpt2_config_from_hf(config: dict) -> GPTConfig:
    """`GPTConfig` (tied head) from a Hugging Face GPT-2 ``config.json`` dict."""
    act = config.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise TfcompressError(f"config.json activation_function is {act!r}; "
                              "only GPT-2's 'gelu_new' is supported")
    d = config["n_embd"]
    return GPTConfig(vocab_size=config["vocab_size"], seq_len=config.get("n_positions", 1024),
                     d_model=d, n_layers=config["n_layer"], n_heads=config["n_head"],
                     d_ff=config.get("n_inner") or 4 * d, tie_embeddings=True,
                     layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5))


def load_safetensors(folder: str | Path, name: str | None = None,
                     into: str = "port") -> keras.Model:
    """A float32 Keras model with the weights of a local Hugging Face-format folder.

    ``into="port"`` (default): our `build_llama` / `build_gpt` model (``llama``, ``mistral``,
    ``gpt2``). ``into="keras_hub"``: the KerasHub ``CausalLM`` that KerasHub's own converter
    makes (``llama``, ``qwen2``, ``qwen3``, ``gemma``, ``gemma3_text``), folder checked first
    (see `load_hf_causal_lm`).

    Raises `TfcompressError` naming the ``model_type`` when it is not supported, and naming
    the tensor when one is missing or has the wrong shape.
    """
    if into not in INTO:
        raise TfcompressError(f"into must be one of {INTO}, got {into!r}")
    if into == "keras_hub":
        return load_hf_causal_lm(folder, name=name)
    config = read_config(folder)
    kind = config.get("model_type")
    if kind not in LLAMA_TYPES + GPT2_TYPES:
        raise TfcompressError(f"config.json model_type is {kind!r}; supported: "
                              f"{LLAMA_TYPES + GPT2_TYPES}")
    with reading(Path(folder) / "config.json", f"a {kind} config (missing or bad key)"):
        cfg = (llama_config_from_hf if kind in LLAMA_TYPES else gpt2_config_from_hf)(config)
    if kind in LLAMA_TYPES:
        tensors = TensorIndex(folder)  # opened first: a bad file fails before building
        model = build_llama(cfg, name=name or kind)
        assign_weights(model, tensors, hf_llama_names(cfg), source=f"folder {Path(folder).name!r}")
        return model
    tensors = TensorIndex(folder, strip_prefix="transformer.")
    model = build_gpt(cfg, name=name or "gpt2")
    for i in range(cfg.n_layers):
        model.get_layer(f"block{i}_mlp_in").activation = gelu_tanh
    names, getter = gpt2_mapping(cfg, tensors)
    assign_weights(model, getter, names, source=f"folder {Path(folder).name!r}")
    return model


def gpt2_mapping(cfg: GPTConfig, tensors: Callable[[str], np.ndarray | None]):
    """``(names, getter)`` for `assign_weights` from GPT-2 tensors onto `build_gpt` variables.

    GPT-2 stores ``Conv1D`` kernels as ``(in, out)`` and fuses q, k and v in ``c_attn``;
    the getter splits it and reshapes each part to the ``(d, heads, head_dim)`` layout of
    Keras's MultiHeadAttention. Virtual names ``...c_attn.weight[query]`` name the part.
    """
    d, h = cfg.d_model, cfg.n_heads
    hd = d // h
    names: dict[str, tuple[str, bool]] = {
        "wte.weight": ("token_embedding/embeddings", False),
        "wpe.weight": ("position_embedding/embeddings", False),
        "ln_f.weight": ("final_norm/gamma", False), "ln_f.bias": ("final_norm/beta", False),
    }
    for i in range(cfg.n_layers):
        p, b = f"h.{i}.", f"block{i}"
        for ln, dst in (("ln_1", "ln1"), ("ln_2", "ln2")):
            names[f"{p}{ln}.weight"] = (f"{b}_{dst}/gamma", False)
            names[f"{p}{ln}.bias"] = (f"{b}_{dst}/beta", False)
        for part in ("query", "key", "value"):
            names[f"{p}attn.c_attn.weight[{part}]"] = (f"{b}_attn/{part}/kernel", False)
            names[f"{p}attn.c_attn.bias[{part}]"] = (f"{b}_attn/{part}/bias", False)
        names[f"{p}attn.c_proj.weight"] = (f"{b}_attn/attention_output/kernel", False)
        names[f"{p}attn.c_proj.bias"] = (f"{b}_attn/attention_output/bias", False)
        for src, dst in (("c_fc", "mlp_in"), ("c_proj", "mlp_out")):
            names[f"{p}mlp.{src}.weight"] = (f"{b}_{dst}/kernel", False)
            names[f"{p}mlp.{src}.bias"] = (f"{b}_{dst}/bias", False)

    def getter(key: str):
        base, _, part = key.partition("[")
        array = tensors(base)
        if array is None:
            return None
        if base.endswith("attn.c_attn.weight") or base.endswith("attn.c_attn.bias"):
            want = (d, 3 * d) if base.endswith("weight") else (3 * d,)
            if array.shape != want:
                raise TfcompressError(f"tensor {base!r} has shape {array.shape}, expected {want}")
            index = ("query", "key", "value").index(part.rstrip("]"))
            chunk = array[..., index * d:(index + 1) * d]
            return chunk.reshape(*chunk.shape[:-1], h, hd)
        if base.endswith("attn.c_proj.weight"):
            if array.shape != (d, d):
                raise TfcompressError(f"tensor {base!r} has shape {array.shape}, "
                                      f"expected {(d, d)}")
            return array.reshape(h, hd, d)
        return array

    return names, getter


def hf_tokenizer(folder: str | Path):
    """The ``tokenizer.json`` of a Hugging Face-format folder, as a `BPETokenizer`."""
    from tfcompress.data.tokenizers import BPETokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise TfcompressError(f"folder {str(folder)!r} has no tokenizer.json")
    with reading(path, "a Hugging Face tokenizer.json"):
        return BPETokenizer.from_json(path.read_text(encoding="utf-8"))
