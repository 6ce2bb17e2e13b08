"""Load pretrained checkpoints into Keras 3 models: GGUF (llama.cpp) and HF safetensors folders.

Nothing here touches the network: every loader reads local files. ``gguf`` and
``safetensors`` are the optional ``[llm]`` extra and are imported only when a loader runs.

Example:
    >>> model = load_gguf(path)                  # Llama GGUF -> build_llama model (float32)
    >>> tokenizer = gguf_tokenizer(path)         # byte-level BPE from the GGUF metadata
    >>> model = load_safetensors("my-hf-folder") # config.json + *.safetensors (llama or gpt2)
    >>> tokenizer = hf_tokenizer("my-hf-folder") # its tokenizer.json
    >>> lm = load_gguf(path, into="keras_hub")   # llama/qwen2/qwen3/gemma/gemma3 -> CausalLM
    >>> lm = load_safetensors("my-hf-folder", into="keras_hub")  # by KerasHub's converter
"""

from tfcompress.models.loaders.gguf import gguf_config, gguf_tokenizer, load_gguf, unpermute_qk
from tfcompress.models.loaders.kerashub import (
    check_hub_preset,
    gguf_hf_config,
    load_gguf_causal_lm,
    load_hf_causal_lm,
)
from tfcompress.models.loaders.safetensors import hf_tokenizer, load_safetensors

__all__ = [
    "check_hub_preset",
    "gguf_config",
    "gguf_hf_config",
    "gguf_tokenizer",
    "hf_tokenizer",
    "load_gguf",
    "load_gguf_causal_lm",
    "load_hf_causal_lm",
    "load_safetensors",
    "unpermute_qk",
]
