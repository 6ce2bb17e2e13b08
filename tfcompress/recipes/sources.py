"""Where a recipe's model, tokenizer and text come from.

Every model becomes a Keras model mapping token ids ``(batch, seq)`` to logits; a KerasHub
``CausalLM`` (which takes ``{"token_ids", "padding_mask"}``) is wrapped once by `ids_to_logits`
so every verb and measurement sees the same interface.

Example:
    >>> model, tokenizer = load_model({"keras": "my_lm.keras"})
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfcompress.core.files import write_atomic
from tfcompress.errors import TfcompressError


class KerasHubTokenizer:
    """A KerasHub tokenizer behind the ``encode`` / ``decode`` / ``vocab_size`` interface of
    `tfcompress.data` tokenizers."""

    name = "kerashub"

    def __init__(self, tokenizer):
        self._tok = tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self._tok.vocabulary_size())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.tokenize(text), dtype=np.int32).reshape(-1)

    def decode(self, ids) -> str:
        out = self._tok.detokenize(np.asarray(list(ids), dtype=np.int32))
        out = out.numpy() if hasattr(out, "numpy") else out
        return out.decode("utf-8", errors="replace") if isinstance(out, bytes) else str(out)


def is_causal_lm(model) -> bool:
    """Whether ``model`` is a KerasHub ``CausalLM`` (dict inputs, a ``backbone``)."""
    return any(c.__name__ == "CausalLM" for c in type(model).__mro__)


def ids_to_logits(causal_lm):
    """A functional model ``token_ids -> logits`` around a KerasHub ``CausalLM`` (its padding
    mask all ones: windows of training text have no padding)."""
    import keras

    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    logits = causal_lm({"token_ids": ids, "padding_mask": keras.ops.ones_like(ids)})
    return keras.Model(ids, logits, name=causal_lm.name)


def _tokenizer_file(path: str | Path):
    from tfcompress.data.tokenizers import tokenizer_from_json

    return tokenizer_from_json(Path(path).read_text(encoding="utf-8"))


def load_custom_objects(specs, arg: str = "custom_objects") -> dict:
    """Import each ``"module"`` (its ``register_keras_serializable`` classes register on
    import) or ``"module:attr"`` (also registered under ``attr`` for ``keras.saving``), so a
    model with the user's own layers loads; the current folder is importable.
    Returns ``{name: object}`` of the ``module:attr`` ones."""
    import importlib
    import os
    import sys

    import keras

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found = {}
    for spec in specs or ():
        module, _, attr = str(spec).partition(":")
        try:
            value = importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - any import failure is the user's to fix
            raise TfcompressError(
                f"{arg}: cannot import {module!r} ({type(err).__name__}: {err}); run from the "
                "folder that holds it or add that folder to PYTHONPATH") from err
        if attr:
            if not hasattr(value, attr):
                names = [n for n in dir(value) if not n.startswith("_")]
                raise TfcompressError(f"{arg}: module {module!r} has no {attr!r} (it has: "
                                      f"{', '.join(names[:12])})")
            found[attr] = getattr(value, attr)
    keras.saving.get_custom_objects().update(found)
    return found


def load_model(spec: dict):
    """``(model, tokenizer or None)`` from a validated ``model`` section (not a preset)."""
    import keras

    if "object" in spec:
        model = spec["object"]
        if is_causal_lm(model):
            tok = getattr(model.preprocessor, "tokenizer", None) if model.preprocessor else None
            return ids_to_logits(model), KerasHubTokenizer(tok) if tok is not None else None
        if not isinstance(model, keras.Model):
            raise TfcompressError(f"model.object must be a Keras 3 model or a KerasHub "
                                  f"CausalLM, got {type(model).__name__}")
        return model, None
    load_custom_objects(spec.get("custom_objects"), "model.custom_objects")
    if "keras" in spec:
        path = Path(spec["keras"])
        model = load_keras(path)
        beside = path.parent / "tokenizer.json"
        return model, _tokenizer_file(beside) if beside.is_file() else None
    if "kerashub" in spec:
        keras_hub = _import_kerashub()
        if keras_hub is None:
            raise TfcompressError("model.kerashub needs the keras-hub package: pip install "
                                  "keras-hub")
        causal_lm = keras_hub.models.CausalLM.from_preset(spec["kerashub"])
        tok = getattr(causal_lm.preprocessor, "tokenizer", None) if causal_lm.preprocessor \
            else keras_hub.models.Tokenizer.from_preset(spec["kerashub"])
        return ids_to_logits(causal_lm), KerasHubTokenizer(tok)
    if "gguf" in spec:
        from tfcompress.models.loaders.gguf import gguf_tokenizer, load_gguf

        return load_gguf(spec["gguf"], name=spec["name"]), gguf_tokenizer(spec["gguf"])
    from tfcompress.models.loaders.safetensors import hf_tokenizer, load_safetensors

    return load_safetensors(spec["safetensors"], name=spec["name"]), hf_tokenizer(
        spec["safetensors"])


def load_keras(path: str | Path):
    """`tfcompress.core.saving.load_model` (errors name the file), importing KerasHub first
    when the file holds its classes (a wrapped ``CausalLM``: they register on import)."""
    from tfcompress.core.saving import load_model

    if _archive_names_kerashub(path):
        _import_kerashub()
    return load_model(path)


def _archive_names_kerashub(path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return b"keras_hub" in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False  # load_model reports what is wrong with the file


def _import_kerashub():
    try:
        import keras_hub
    except ImportError:
        return None
    return keras_hub


def choose_tokenizer(data: dict, model_tokenizer):
    """The tokenizer a validated ``data`` section asks for (``"model"``: the model's own)."""
    from tfcompress.data.tokenizers import ByteTokenizer

    choice = data["tokenizer"]
    if choice == "model":
        if model_tokenizer is None:
            raise TfcompressError("data.tokenizer: the model brings no tokenizer; choose byte, "
                                  "bpe or a tokenizer.json path")
        return model_tokenizer
    if choice == "byte":
        return ByteTokenizer()
    if choice == "bpe":
        return "bpe"  # trained on the train split by load_corpus
    return _tokenizer_file(choice)


def write_tokenizer(tokenizer, folder: str | Path, stem: str) -> Path | None:
    """Write ``tokenizer``'s JSON as ``folder/tokenizer.json`` (atomically), never over a
    different file already there (the user's own tokenizer beside their model): then as
    ``folder/<stem>.tokenizer.json``. None for a tokenizer with no JSON form."""
    import json

    if not hasattr(tokenizer, "to_json"):
        return None
    text = tokenizer.to_json()
    path = Path(folder) / "tokenizer.json"
    if path.is_file():
        try:
            if json.loads(path.read_text(encoding="utf-8")) == json.loads(text):
                return path
        except (ValueError, UnicodeDecodeError):
            pass  # not a JSON file: not ours either
        path = Path(folder) / f"{stem}.tokenizer.json"
    return write_atomic(path, text)


def load_text(data: dict, tokenizer):
    """The `LMCorpus` of a validated ``data`` section with ``tokenizer``."""
    from tfcompress.data import load_corpus

    source = (data["corpus"] if "corpus" in data else
              f"tfds:{data['tfds']}" if "tfds" in data else data["text"])
    return load_corpus(source, tokenizer=tokenizer, vocab_size=data["vocab_size"],
                       text_key=data["text_key"], data_dir=data.get("data_dir"))


def check_vocab(model, corpus) -> None:
    """Refuse token ids the model cannot embed."""
    vocab = int(model.outputs[0].shape[-1])
    if corpus.vocab_size > vocab:
        raise TfcompressError(
            f"data.tokenizer: its vocabulary ({corpus.vocab_size}) is larger than the model's "
            f"output ({vocab}); use the tokenizer the model was trained with")


def spec_for_path(path: str | Path) -> dict:
    """The ``model`` section for a path: ``.keras`` / ``.gguf`` file, safetensors or KerasHub
    preset folder."""
    p = Path(path)
    if not p.exists():
        raise TfcompressError(f"model: {str(path)!r} does not exist")
    if p.suffix in (".keras", ".gguf"):
        return {p.suffix[1:]: str(p), "name": p.stem}
    if p.is_dir() and (p / "config.json").is_file() and any(p.glob("*.safetensors")):
        return {"safetensors": str(p), "name": p.name}
    if p.is_dir() and (p / "metadata.json").is_file():
        return {"kerashub": str(p), "name": p.name}
    raise TfcompressError(f"model: {str(path)!r} is not a .keras or .gguf file, a safetensors "
                          "folder (config.json + *.safetensors) or a KerasHub preset folder "
                          "(metadata.json)")


def model_from_path(path: str | Path):
    """``(model, tokenizer or None)`` for a path; a ``.tflite`` file stays a path (with the
    ``tokenizer.json`` beside it, if any)."""
    if str(path).endswith(".tflite"):
        from tfcompress.core.validation import check_input_file

        check_input_file(path, "model", ".tflite")
        beside = Path(path).parent / "tokenizer.json"
        return str(path), _tokenizer_file(beside) if beside.is_file() else None
    return load_model(spec_for_path(path))


def max_positions(model) -> int | None:
    """The longest input a model's position embeddings allow (None when none is found)."""
    from tfcompress.core import iter_layers

    found = [getattr(layer, attr) for _, layer in iter_layers(model)
             for attr in ("max_length", "max_sequence_length", "sequence_length")
             if isinstance(getattr(layer, attr, None), int)]
    return min(found) if found else None


def probe_seq_len(model, seq_len: int | None) -> int:
    """The window length to measure ``model`` with: its fixed input length, else ``seq_len``
    (default 128), checked by one forward pass so a too-long window is a clear error."""
    if isinstance(model, str):
        from tfcompress.export import TFLiteRunner

        fixed = TFLiteRunner(model).seq_len
    else:
        shape = model.inputs[0].shape if getattr(model, "inputs", None) else (None, None)
        fixed = shape[1] if len(shape) > 1 else None
    if fixed is not None and seq_len not in (None, fixed):
        raise TfcompressError(f"seq_len: the model takes {fixed}-token windows only, got "
                              f"{seq_len}")
    limit = None if isinstance(model, str) else max_positions(model)
    if limit is not None and seq_len is not None and seq_len > limit:
        raise TfcompressError(f"seq_len: the model has {limit} positions, got {seq_len}")
    n = int(seq_len or fixed or min(128, limit or 128))
    if not isinstance(model, str):
        try:
            model(np.zeros((1, n), dtype=np.int32))
        except Exception as err:  # noqa: BLE001 - any failure here means the length is wrong
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
            raise TfcompressError(
                f"seq_len: the model fails on {n}-token windows ({type(err).__name__}: "
                f"{first}); give a shorter seq_len") from err
    return n
