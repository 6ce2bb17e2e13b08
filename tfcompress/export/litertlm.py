"""Pack a bundle written by `export_llm` into one ``.litertlm`` file, the container that
LiteRT-LM's engine (the runtime Android/iOS apps embed) loads: the prefill/decode ``.tflite``,
the Hugging Face tokenizer and LLM metadata (start and stop tokens, cache length).

Needs the ``litert-lm-builder`` package.

Example:
    >>> write_litertlm("bundle/", "smollm2.litertlm")
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tfcompress.core.files import atomic_path
from tfcompress.errors import TfcompressError
from tfcompress.export.llm_layout import CONFIG_FILE


def llm_metadata(config: dict) -> bytes:
    """The serialized ``LlmMetadata`` proto of a bundle's ``llm.json``: start token (BOS),
    stop tokens (EOS), ``max_num_tokens`` (the cache length), a generic model type."""
    from litert_lm_builder.runtime.proto import llm_metadata_pb2, llm_model_type_pb2, token_pb2

    special = config.get("special_tokens", {})
    meta = llm_metadata_pb2.LlmMetadata(max_num_tokens=int(config["cache_length"]))
    if "bos" in special:
        meta.start_token.token_ids.ids.append(int(special["bos"]))
    for stop in config.get("stop_ids", []):
        meta.stop_tokens.append(token_pb2.TokenUnion(token_ids=token_pb2.TokenIds(ids=[stop])))
    meta.llm_model_type.CopyFrom(llm_model_type_pb2.LlmModelType(
        generic_model=llm_model_type_pb2.GenericModel()))
    return meta.SerializeToString()


def write_litertlm(bundle: str | Path, path: str | Path | None = None) -> Path:
    """Write ``bundle`` as a ``.litertlm`` file (default: ``model.litertlm`` in the bundle).

    The bundle must hold a tokenizer (export with ``tokenizer=``). Returns the file's path.
    """
    try:
        from litert_lm_builder import DType, LitertLmFileBuilder, Metadata, TfLiteModelType
    except ImportError:
        raise TfcompressError("writing .litertlm needs the LiteRT-LM builder: "
                              "pip install litert-lm-builder") from None
    folder = Path(bundle)
    if not (folder / CONFIG_FILE).is_file():
        raise TfcompressError(f"bundle must be a folder written by export_llm, got "
                              f"{str(folder)!r}")
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if not config.get("tokenizer_file"):
        raise TfcompressError("the bundle has no tokenizer.json (export with tokenizer=), "
                              "which a .litertlm file must carry")
    path = Path(path) if path is not None else folder / "model.litertlm"
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / "llm_metadata.pb"
        meta_path.write_bytes(llm_metadata(config))
        builder = LitertLmFileBuilder()
        builder.add_system_metadata(Metadata(key="Authors", value="tfcompress",
                                             dtype=DType.STRING))
        builder.add_llm_metadata(str(meta_path))
        builder.add_tflite_model(str(folder / config["model_file"]),
                                 TfLiteModelType.PREFILL_DECODE)
        builder.add_hf_tokenizer(str(folder / config["tokenizer_file"]))
        with atomic_path(path) as partial, open(partial, "wb") as stream:
            builder.build(stream)
    return path
