"""GGUF files and Hugging Face folders -> KerasHub ``CausalLM`` models, offline.

Both go through KerasHub's own Hugging Face converters (the code behind
``keras_hub.models.CausalLM.from_preset(hf_folder)``). A GGUF file's metadata becomes the
``config.json`` dict that converter reads, and its tensors are served to it under their
Hugging Face names (``gguf``'s own name map), dequantized one at a time, with what llama.cpp's
``convert_hf_to_gguf.py`` changed undone: the q/k row permutation of ``llama``, the
``1 + w`` RMSNorm weights of ``gemma`` and ``gemma3``. The GGUF's tokenizer becomes the
family's KerasHub preprocessor (byte-level BPE: vocabulary and merges; Gemma: SentencePiece).
KerasHub keeps those converters under ``keras_hub.src`` (not its public API): this module is
written against keras-hub 0.32 (``constraints.txt``), and the loader tests fail if they move.

Example:
    >>> lm = load_gguf_causal_lm("SmolLM2-135M-Instruct.Q4_1.gguf")   # Llama3CausalLM
    >>> lm.generate("The capital of France is", max_length=16)
    >>> lm = load_hf_causal_lm("path/to/Qwen2.5-0.5B")                 # QwenCausalLM
"""

from __future__ import annotations

import inspect
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfcompress._extras import require
from tfcompress.core.validation import reading
from tfcompress.errors import TfcompressError
from tfcompress.models.loaders.readers import (
    _field,
    _reader,
    bpe_vocabulary,
    dequantized,
    gguf_name_map,
    read_config,
    unpermute_qk,
)


@dataclass(frozen=True)
class Family:
    """How one model family reaches KerasHub: its Hugging Face ``model_type``, the files
    KerasHub's tokenizer converter reads, and what llama.cpp changed in its GGUF tensors."""

    model_type: str
    tokenizer_files: tuple[tuple[str, ...], ...]  # each inner tuple: any one of these files
    permute_qk: bool = False  # llama.cpp's LlamaModel permutes q/k rows for its RoPE
    norm_shift: float = 0.0   # llama.cpp stores Gemma RMSNorm weights as 1 + w


GGUF_FAMILIES = {
    "llama": Family("llama", (("tokenizer.json",), ("tokenizer_config.json",)), permute_qk=True),
    "qwen2": Family("qwen2", (("tokenizer.json",),)),
    "qwen3": Family("qwen3", (("tokenizer.json",),)),
    "gemma": Family("gemma", (("tokenizer.model",),), norm_shift=1.0),
    "gemma3": Family("gemma3_text", (("tokenizer.model", "tokenizer.json"),), norm_shift=1.0),
}
HF_FAMILIES = {f.model_type: f for f in GGUF_FAMILIES.values()}
BYTE = 6  # GGUF (and SentencePiece) token type of a <0xNN> byte piece
# RoPE bases KerasHub's Gemma backbones hard-code (Gemma3: local layers, global layers)
GEMMA_ROPE, GEMMA3_ROPE = 10_000.0, (10_000.0, 1_000_000.0)


def _keras_hub():
    return require("keras_hub", extra="test", feature="loading into KerasHub classes")


def _converter(model_type: str):
    """KerasHub's Hugging Face converter module for ``model_type`` (its own dispatch)."""
    _keras_hub()
    from keras_hub.src.utils.transformers.preset_loader import TransformersPresetLoader

    return TransformersPresetLoader(None, {"model_type": model_type}).converter


def _task_class(backbone_cls):
    """The ``CausalLM`` subclass KerasHub pairs with ``backbone_cls`` (as ``from_preset``)."""
    from keras_hub.src.utils.preset_utils import find_subclass

    return find_subclass(backbone_cls.__name__, _keras_hub().models.CausalLM, backbone_cls)


def _builtin_presets() -> dict:
    """KerasHub's built-in ``CausalLM`` preset names (all hosted online)."""
    return _keras_hub().models.CausalLM.presets


def backbone_kwargs(hf_config: dict) -> dict:
    """KerasHub backbone arguments for a Hugging Face ``config.json`` dict, by KerasHub's
    converter, plus the RMSNorm epsilon its ``llama`` and ``gemma`` converters leave out
    (their backbones would use 1e-6; SmolLM2 was trained with 1e-5)."""
    kind = hf_config.get("model_type")
    with reading("config.json", f"a {kind} config (a key KerasHub reads is missing)"):
        kwargs = _converter(kind).convert_backbone_config(hf_config)
    if "rms_norm_eps" in hf_config:
        kwargs.setdefault("layer_norm_epsilon", float(hf_config["rms_norm_eps"]))
    return kwargs


# ------------------------------------------------------------------------------------- GGUF
def gguf_hf_config(path_or_reader) -> dict:
    """The Hugging Face ``config.json`` dict a GGUF file's metadata describes.

    Raises `TfcompressError` for an architecture outside `GGUF_FAMILIES` or a setting the
    family's KerasHub backbone cannot represent (RoPE scaling, a head width it derives, a
    RoPE base it hard-codes).
    """
    reader = path_or_reader if hasattr(path_or_reader, "fields") else _reader(path_or_reader)
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_FAMILIES:
        raise TfcompressError(f"GGUF general.architecture is {arch!r}; into='keras_hub' reads "
                              f"{tuple(GGUF_FAMILIES)}")

    def meta(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise TfcompressError("GGUF file has no tensor 'token_embd.weight'")
    if "rope_freqs.weight" in tensors:
        raise TfcompressError("GGUF file has a 'rope_freqs.weight' tensor (Llama 3.1-style RoPE "
                              "scaling), which this loader does not map")
    heads, d = int(meta("attention.head_count")), int(meta("embedding_length"))
    config = {
        "model_type": GGUF_FAMILIES[arch].model_type,
        "vocab_size": int(tensors["token_embd.weight"].shape[-1]),  # ggml lists dims inner first
        "hidden_size": d,
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
        "intermediate_size": int(meta("feed_forward_length")),
        "head_dim": int(meta("attention.key_length", d // heads)),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta("rope.freq_base", 10_000.0)),
        "tie_word_embeddings": "output.weight" not in tensors,
        "use_sliding_window": False,
        "sliding_window": None,
    }
    scaling = _field(reader, f"{arch}.rope.scaling.type", "none")
    if arch in ("llama", "qwen2") and config["head_dim"] * heads != d:
        raise TfcompressError(f"GGUF {arch}.attention.key_length is {config['head_dim']}; "
                              f"KerasHub's {arch} backbone needs embedding_length / head_count "
                              f"= {d // heads}")
    if arch == "gemma" and config["rope_theta"] != GEMMA_ROPE:
        raise TfcompressError(f"GGUF gemma.rope.freq_base is {config['rope_theta']}; KerasHub's "
                              f"GemmaBackbone fixes it at {GEMMA_ROPE}")
    if arch == "gemma3":
        local = float(meta("rope.freq_base_swa", GEMMA3_ROPE[0]))
        if (local, config["rope_theta"]) != GEMMA3_ROPE:
            raise TfcompressError(f"GGUF gemma3 RoPE bases (local, global) are "
                                  f"{(local, config['rope_theta'])}; KerasHub's Gemma3Backbone "
                                  f"fixes them at {GEMMA3_ROPE}")
        config["sliding_window"] = int(meta("attention.sliding_window"))
        # llama.cpp scales Gemma3 27B (62 blocks) queries by hidden / heads, others by head_dim
        config["query_pre_attn_scalar"] = (d // heads if config["num_hidden_layers"] == 62
                                           else config["head_dim"])
        if scaling == "linear":
            config["rope_scaling"] = {"rope_type": "linear",
                                      "factor": float(meta("rope.scaling.factor"))}
            scaling = "none"
    if scaling != "none":
        raise TfcompressError(f"GGUF {arch}.rope.scaling.type is {scaling!r}; only plain RoPE "
                              "is mapped")
    return config


class GGUFTensors:
    """A GGUF file's tensors under Hugging Face names, for KerasHub's converters.

    Offers what those converters call on their safetensors loader: ``get_tensor(hf_name)``
    and ``port_weight(keras_variable, hf_weight_key, hook_fn)``; keeps which GGUF tensors
    were read so `unread` can name the ones no variable took.
    """

    def __init__(self, reader, config: dict):
        self._arch = _field(reader, "general.architecture")
        self._family = GGUF_FAMILIES[self._arch]
        self._config = config
        self._tensors = {t.name: t for t in reader.tensors}
        self._names = gguf_name_map(self._arch, config["num_hidden_layers"])
        self._read: set[str] = set()

    def gguf_name(self, hf_name: str) -> str | None:
        """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``."""
        return self._names.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def get_tensor(self, hf_name: str) -> np.ndarray:
        name = self.gguf_name(hf_name)
        if name not in self._tensors:
            raise TfcompressError(f"GGUF file has no tensor {name or hf_name!r} (Hugging Face "
                                  f"{hf_name!r})")
        w = dequantized(self._tensors[name])
        self._read.add(name)
        if self._family.permute_qk and name.endswith("attn_q.weight"):
            w = unpermute_qk(w, self._config["num_attention_heads"])
        elif self._family.permute_qk and name.endswith("attn_k.weight"):
            w = unpermute_qk(w, self._config["num_key_value_heads"])
        if hf_name.endswith("norm.weight"):  # the names llama.cpp shifts (convert_hf_to_gguf)
            w = w - self._family.norm_shift
        return w

    def port_weight(self, keras_variable, hf_weight_key: str, hook_fn=None) -> None:
        w = self.get_tensor(hf_weight_key)
        target = tuple(keras_variable.shape)
        try:
            w = hook_fn(w, list(target)) if hook_fn else w
        except ValueError as err:  # a reshape that cannot fit
            raise TfcompressError(f"GGUF tensor {self.gguf_name(hf_weight_key)!r} has shape "
                                  f"{w.shape}, which does not fit {keras_variable.path} "
                                  f"{target}") from err
        if tuple(w.shape) != target:
            raise TfcompressError(f"GGUF tensor {self.gguf_name(hf_weight_key)!r} gives shape "
                                  f"{tuple(w.shape)}, expected {target} for {keras_variable.path}")
        keras_variable.assign(w)

    def unread(self) -> list[str]:
        return sorted(set(self._tensors) - self._read)


def load_gguf_causal_lm(path: str | Path, preprocessor: bool = True, name: str | None = None):
    """A float32 KerasHub ``CausalLM`` with the weights of a GGUF file.

    ``general.architecture`` ``llama`` gives a ``Llama3CausalLM`` (a ``LlamaCausalLM``; its
    byte-level BPE tokenizer is KerasHub's Llama 3 one), ``qwen2`` a ``QwenCausalLM``
    (``Qwen2CausalLM``), ``qwen3`` a ``Qwen3CausalLM``, ``gemma`` a ``GemmaCausalLM`` and
    ``gemma3`` a ``Gemma3CausalLM`` (text only). With ``preprocessor`` the model carries the
    family's KerasHub preprocessor: from the file's byte-level BPE vocabulary and merges
    (llama, qwen2, qwen3), or from its SentencePiece pieces, scores and types (gemma,
    gemma3; `sentencepiece_proto`). A SentencePiece Llama (Llama 2) comes without one.
    Raises `TfcompressError` before building anything for a file, architecture or setting
    it cannot map, and naming the tensor when one is missing, misshapen or left over.
    """
    reader = _reader(path)
    config = gguf_hf_config(reader)
    converter = _converter(config["model_type"])
    task_cls = _task_class(converter.backbone_cls)
    tensors = GGUFTensors(reader, config)
    tokenizer = None
    kind = _field(reader, "tokenizer.ggml.model", required=False) if preprocessor else None
    tokenizer_cls = task_cls.preprocessor_cls.tokenizer_cls
    if kind == "gpt2":
        tokenizer = _hub_bpe_tokenizer(path, reader, converter, task_cls)
    elif kind == "llama" and "proto" in inspect.signature(tokenizer_cls).parameters:
        # Gemma3Tokenizer: text only, as the Gemma3CausalLM built here
        extra = {"has_vision_tokens": False} if config["model_type"] == "gemma3_text" else {}
        with reading(path, "a GGUF SentencePiece tokenizer"):
            tokenizer = tokenizer_cls(proto=sentencepiece_proto(reader), **extra)
    backbone = converter.backbone_cls(**backbone_kwargs(config))
    converter.convert_weights(backbone, tensors, config)
    if tensors.unread():
        raise TfcompressError(f"GGUF file {Path(path).name!r} has tensors the KerasHub "
                              f"{converter.backbone_cls.__name__} has no variable for: "
                              f"{tensors.unread()}")
    pre = task_cls.preprocessor_cls(tokenizer) if tokenizer is not None else None
    return task_cls(backbone=backbone, preprocessor=pre, **({"name": name} if name else {}))


def sentencepiece_proto(reader) -> bytes:
    """The serialized SentencePiece model of a GGUF SentencePiece (``llama``) tokenizer.

    llama.cpp copies every piece with its score and type (the numbering is SentencePiece's)
    from ``tokenizer.model``; with BPE, byte fallback when the vocabulary has byte pieces,
    no normalization, whitespace as ``▁`` and a dummy prefix as ``add_space_prefix`` says
    (llama.cpp's default: on), the model encodes as the original.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp

    tokens = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores", [0.0] * len(tokens), required=False)
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens), required=False)
    proto = sp.ModelProto()
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size = sp.TrainerSpec.BPE, len(tokens)
    spec.byte_fallback = BYTE in types
    for role, key in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        token_id = _field(reader, f"tokenizer.ggml.{key}_token_id", required=False)
        setattr(spec, f"{role}_id", -1 if token_id is None else int(token_id))
    prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))
    for norm in (proto.normalizer_spec, proto.denormalizer_spec):
        norm.name, norm.add_dummy_prefix = "identity", prefix
        norm.remove_extra_whitespaces, norm.escape_whitespaces = False, True
    for token, score, kind in zip(tokens, scores, types, strict=True):
        proto.pieces.add(piece=token, score=float(score), type=int(kind))
    return proto.SerializeToString()


def _hub_bpe_tokenizer(path, reader, converter, task_cls):
    """The family's KerasHub tokenizer, made by KerasHub's converter from a
    ``tokenizer.json`` holding the GGUF's vocabulary, merges and special tokens (and a
    ``tokenizer_config.json`` with its BOS/EOS, which the Llama 3 one reads)."""
    vocab, merges, special = bpe_vocabulary(reader)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    roles = {}
    for role in ("bos", "eos"):
        token_id = _field(reader, f"tokenizer.ggml.{role}_token_id", required=False)
        if token_id is not None:
            roles[f"{role}_token"] = tokens[int(token_id)]
    spec = {"model": {"type": "BPE", "vocab": vocab, "merges": merges},
            "added_tokens": [{"id": vocab[t], "content": t, "special": True} for t in special]}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
        Path(folder, "tokenizer_config.json").write_text(json.dumps(roles), encoding="utf-8")
        with reading(path, "a GGUF tokenizer KerasHub can build (BOS/EOS token ids missing?)"):
            return converter.convert_tokenizer(task_cls.preprocessor_cls.tokenizer_cls, folder)


# -------------------------------------------------------------------- Hugging Face folders
def check_hub_preset(preset: str | Path, preprocessor: bool = True) -> dict:
    """The ``config.json`` of a local preset folder KerasHub can load offline, checked.

    A KerasHub preset name or ``hf://`` / ``kaggle://`` handle (which would need a download)
    gets one line asking for a local folder; a Hugging Face folder must be one of
    `HF_FAMILIES`, with the weights, config keys and (with ``preprocessor``) tokenizer
    files KerasHub's converter reads.
    """
    if isinstance(preset, str) and not Path(preset).exists() and (
            "://" in preset or preset in _builtin_presets()):
        raise TfcompressError(f"preset {preset!r} is a KerasHub preset name or remote handle, "
                              "which needs a download; tfcompress loads offline: pass a local "
                              "preset folder (a Hugging Face folder with config.json and "
                              "model.safetensors, or one saved by save_to_preset)")
    config = read_config(preset)
    folder = Path(preset)
    if "registered_name" in config:  # a KerasHub preset folder (save_to_preset)
        return config
    kind = config.get("model_type")
    if kind not in HF_FAMILIES:
        raise TfcompressError(f"config.json model_type is {kind!r}; into='keras_hub' reads "
                              f"{tuple(HF_FAMILIES)}")
    if not any((folder / f).is_file() for f in ("model.safetensors",
                                                "model.safetensors.index.json")):
        raise TfcompressError(f"folder {str(folder)!r} has neither model.safetensors nor "
                              "model.safetensors.index.json (the weight files KerasHub reads)")
    if not config.get("architectures"):
        raise TfcompressError(f"{str(folder / 'config.json')!r} has no 'architectures' list "
                              "(e.g. [\"LlamaForCausalLM\"]), which KerasHub reads")
    backbone_kwargs(config)  # every config key KerasHub's converter reads is there
    if preprocessor:
        for choices in HF_FAMILIES[kind].tokenizer_files:
            if not any((folder / f).is_file() for f in choices):
                raise TfcompressError(f"folder {str(folder)!r} has no {' or '.join(choices)}, "
                                      f"which KerasHub's {kind} tokenizer needs; pass "
                                      "preprocessor=False to load the model alone")
    return config


def load_hf_causal_lm(preset: str | Path, preprocessor: bool = True, name: str | None = None):
    """A KerasHub ``CausalLM`` from a local folder by ``CausalLM.from_preset``, checked first
    (`check_hub_preset`). The backbone gets the folder's ``rms_norm_eps`` where KerasHub's
    converter leaves it out (``llama``, ``gemma``)."""
    config = check_hub_preset(preset, preprocessor)
    kwargs = {} if preprocessor else {"preprocessor": None}
    kwargs |= {"name": name} if name else {}
    with reading(Path(preset), "a KerasHub preset (a weight file is truncated or misnamed?)"):
        if "registered_name" not in config:
            backbone_cls = _converter(config["model_type"]).backbone_cls
            eps = backbone_kwargs(config).get("layer_norm_epsilon")
            kwargs["backbone"] = backbone_cls.from_preset(
                str(preset), **({"layer_norm_epsilon": eps} if eps is not None else {}))
        return _keras_hub().models.CausalLM.from_preset(str(preset), **kwargs)
