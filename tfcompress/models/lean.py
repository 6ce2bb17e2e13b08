"""Lean block-wise calibration: GPTQ, SparseGPT or Wanda over a Llama checkpoint too large to
build whole, one block in memory at a time.

`lean_compress` reads a Hugging Face Llama folder's tensors block by block from its
safetensors files (each file memory-mapped only while a tensor is copied out), or a Llama
GGUF file's (its memory map's pages dropped after each block), builds that
one block (`build_llama_block`), streams the calibration activations through it with the
calibration engine (`tfcompress.core.calibrate`, the same ``compress`` the ``quantize`` and
``prune`` verbs use, so the weights match theirs), writes the compressed block as its own
safetensors shard (atomically) and frees it. The embedding table is read once for the
calibration tokens' rows; no float copy of the whole model is ever held. Peak memory is one
float32 block, its input statistics and the activations (tokens x d_ff).

The output folder is a Hugging Face folder again: ``config.json``, ``block_NNNNN.safetensors``
per block (kernels on the quantized grid or with their zeros, ``out_dtype``), ``rest.safetensors``
(embedding, final norm, head as stored), ``model.safetensors.index.json`` and the source's
tokenizer files (a GGUF's: its metadata as ``config.json``, its BPE vocabulary as
``tokenizer.json``), so `load_safetensors` loads it.

Example:
    >>> config = GPTQConfig(bits=4, granularity="group", group_size=128)
    >>> lean_compress("SmolLM2-1.7B/", "runs/smollm2-1.7b-gptq", config, ids)
    >>> model = load_safetensors("runs/smollm2-1.7b-gptq")
"""

from __future__ import annotations

import gc
import json
import mmap
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from tfcompress._extras import require
from tfcompress.core.calibration import calibrate, calibration_batches
from tfcompress.core.compressor import Compressor
from tfcompress.core.files import atomic_path, write_atomic
from tfcompress.core.layers import select_layers
from tfcompress.core.progress import progress_bar
from tfcompress.core.registry import MethodConfig, resolve_config
from tfcompress.core.validation import check_token_ids, reading
from tfcompress.errors import TfcompressError
from tfcompress.models.llama import LlamaConfig, assign_weights, build_llama_block, hf_llama_names
from tfcompress.models.loaders.gguf import (
    gguf_config,
    gguf_llama_names,
    gguf_tensors,
    gguf_tokenizer,
)
from tfcompress.models.loaders.kerashub import gguf_hf_config
from tfcompress.models.loaders.readers import _reader, read_config
from tfcompress.models.loaders.safetensors import LLAMA_TYPES, TensorIndex, llama_config_from_hf
from tfcompress.prune.config import STRUCTURED, PruneConfig, SparseGPTConfig, WandaConfig
from tfcompress.prune.oneshot import SparseGPTPruner, WandaPruner
from tfcompress.quantize.api import gptq_able
from tfcompress.quantize.config import GPTQConfig, QuantizeConfig
from tfcompress.quantize.gptq import GPTQCompressor

OUT_DTYPES = ("float32", "float16")
EXTRA_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "generation_config.json")


@dataclass
class _Method:
    """A one-shot method as lean runs it: its `Compressor`, which layers of a block it takes
    (``select(block)``) and its config (``max_rows``, ``sequential``)."""

    compressor: Compressor
    select: Callable
    config: MethodConfig


def _method(config) -> _Method:
    """The `_Method` of a one-shot config (an old `QuantizeConfig` / `PruneConfig` is read as
    its method's config, with the verbs' DeprecationWarning); other methods raise."""
    if isinstance(config, QuantizeConfig):
        config = resolve_config("quantize", config, {}, "gptq", legacy=QuantizeConfig)
    elif isinstance(config, PruneConfig):
        config = resolve_config("prune", config, {}, "magnitude", legacy=PruneConfig)
    if isinstance(config, GPTQConfig):
        def select(block):
            chosen = select_layers(block, types=config.layer_types, include=config.include,
                                   exclude=config.exclude, require=False)
            return [(p, la) for p, la in chosen if gptq_able(la)]

        return _Method(GPTQCompressor(config), select, config)
    pruners = {SparseGPTConfig: SparseGPTPruner, WandaConfig: WandaPruner}
    if (type(config) in pruners and getattr(config, "scope", "layer") == "layer"
            and config.pattern not in STRUCTURED):  # SparseGPT has no scope: per layer
        def select(block):
            return select_layers(block, config.layer_types, config.include, config.exclude,
                                 require=False)

        return _Method(pruners[type(config)](config), select, config)
    raise TfcompressError(
        "config must be GPTQConfig or a one-shot unstructured SparseGPTConfig / WandaConfig "
        "(scope='layer', no schedule), got "
        f"{type(config).__name__}({getattr(config, 'method', None)!r})")


@dataclass
class _Source:
    """A checkpoint read one tensor at a time by Hugging Face name (float arrays in HF's
    ``(out, in)`` layout), the files copied beside the output's tensors, and ``release``:
    drops the pages of the checkpoint read so far from this process."""

    cfg: LlamaConfig
    tensor: Callable[[str], np.ndarray | None]
    names: set[str]
    files: dict[str, Callable[[Path], object]]
    release: Callable[[], object] = lambda: None


def _folder_source(folder: Path) -> _Source:
    hf = read_config(folder)
    if hf.get("model_type") not in LLAMA_TYPES:
        raise TfcompressError(f"config.json model_type is {hf.get('model_type')!r}; "
                              f"lean_compress reads {LLAMA_TYPES}")
    with reading(folder / "config.json", "a llama config (missing or bad key)"):
        cfg = llama_config_from_hf(hf)
    tensors = TensorIndex(folder, keep_open=False)  # maps a file only while reading it
    files = {name: partial(shutil.copyfile, folder / name)
             for name in ("config.json", *EXTRA_FILES) if (folder / name).is_file()}
    return _Source(cfg, tensors, set(tensors.names()), files)


def _gguf_source(path: Path) -> _Source:
    reader = _reader(path)
    cfg = gguf_config(reader)
    to_gguf, read = gguf_llama_names(cfg), gguf_tensors(reader, cfg)
    held = {t.name for t in reader.tensors}
    config = json.dumps(gguf_hf_config(reader), indent=1)
    files = {"config.json": lambda tmp: tmp.write_text(config)}
    try:
        tokenizer = gguf_tokenizer(path).to_json()
        files["tokenizer.json"] = lambda tmp: tmp.write_text(tokenizer)
    except TfcompressError:  # no byte-level BPE vocabulary in the file: weights only
        pass
    mapped = getattr(reader.data, "_mmap", None)  # gguf's np.memmap of the whole file
    return _Source(cfg, lambda name: read(to_gguf[name]) if name in to_gguf else None,
                   {k for k, g in to_gguf.items() if g in held}, files,
                   lambda: mapped is not None and mapped.madvise(mmap.MADV_DONTNEED))


def _check(checkpoint, out, config, calibration, out_dtype) -> tuple[_Source, np.ndarray,
                                                                      _Method]:
    """Every argument checked before any work; returns the checkpoint as a `_Source`, the
    calibration ids and the method."""
    method = _method(config)
    if out_dtype not in OUT_DTYPES:
        raise TfcompressError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    checkpoint = Path(checkpoint)
    if checkpoint.is_file() and checkpoint.suffix == ".gguf":
        source = _gguf_source(checkpoint)
    else:
        source = _folder_source(checkpoint)
    if Path(out).resolve() == checkpoint.resolve():
        raise TfcompressError(f"out must be another folder than the checkpoint's, got {out!r}")
    if Path(out).exists() and any(Path(out).iterdir()):
        raise TfcompressError(f"out {str(out)!r} is not empty: give a new or empty folder")
    cfg = source.cfg
    missing = sorted(set(hf_llama_names(cfg)) - source.names)
    if missing:
        raise TfcompressError(f"{str(checkpoint)!r} has no tensor {missing[0]!r} "
                              f"({len(missing)} missing)")
    ids = check_token_ids(calibration, "calibration", cfg.vocab_size)
    if isinstance(method.compressor, GPTQCompressor):  # group sizes, before any work
        widths = {"attn_q": cfg.d_model, "attn_k": cfg.d_model, "attn_v": cfg.d_model,
                  "attn_out": cfg.n_heads * cfg.head_dim, "mlp_gate": cfg.d_model,
                  "mlp_up": cfg.d_model, "mlp_down": cfg.d_ff}
        for i in range(cfg.n_layers):
            for kind, width in widths.items():
                method.config.quantizer(f"block{i}_{kind}").group_rows(width)
    return source, ids, method


def _write_shard(path: Path, tensors: dict[str, np.ndarray]) -> None:
    save_file = require("safetensors.numpy", extra="llm", feature="lean_compress").save_file
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))


def _block_tensors(block, names: dict[str, tuple[str, bool]], dtype: str) -> dict:
    """The block's variables under their checkpoint names, in the checkpoint's layout."""
    values = {v.path: v for v in block.weights}
    out = {}
    for name, (path, transpose) in names.items():
        value = np.asarray(values[path].numpy())
        out[name] = (value.T if transpose else value).astype(dtype)
    return out


def _forward(block, hidden: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(block(h, training=False)) for h in hidden]


def _compress_block(block, hidden: list, method: _Method) -> list[np.ndarray]:
    """Compress ``block`` in place from ``hidden``; returns the next block's inputs (from
    the compressed block, or the float one with ``sequential=False``)."""
    dense = None if getattr(method.config, "sequential", True) else _forward(block, hidden)
    layers = method.select(block)
    layerwise = getattr(method.config, "layerwise", False)  # SparseGPT's, as prune's
    if layers:
        calibrate(block, layers, hidden, method.compressor, sequential=layerwise,
                  layerwise=layerwise, max_rows=method.config.max_rows, verbose=0)
    return dense if dense is not None else _forward(block, hidden)


def lean_compress(checkpoint: str | Path, out: str | Path, config, calibration, *,
                  n_blocks: int | None = None, out_dtype: str = "float32",
                  on_block: Callable[[int, float], None] | None = None,
                  verbose: int = 1) -> dict:
    """Compress a Llama checkpoint (a Hugging Face safetensors folder or a ``.gguf`` file)
    block by block into the Hugging Face folder ``out``.

    ``config``: a `GPTQConfig`, a one-shot `SparseGPTConfig` / `WandaConfig` (or the old
    ``QuantizeConfig(method="gptq")`` / ``PruneConfig``); its ``include``/``exclude``/
    ``types``/``max_rows`` apply to each block's layers (embeddings and head are copied as
    they are). ``calibration``: token ids ``(windows, seq_len)``, batched as the verbs batch
    them. ``n_blocks``: compress only the first ones and copy the rest (a partial run).
    ``on_block(index, seconds)`` is called after each block. Returns ``{"out", "blocks",
    "seconds"}`` (seconds per block).
    """
    source, ids, method = _check(checkpoint, out, config, calibration, out_dtype)
    cfg, tensors = source.cfg, source.tensor
    n = cfg.n_layers if n_blocks is None else int(n_blocks)
    if not 0 <= n <= cfg.n_layers:
        raise TfcompressError(f"n_blocks must be in [0, {cfg.n_layers}], got {n_blocks}")
    out, names = Path(out), hf_llama_names(cfg)
    table = tensors("model.embed_tokens.weight")
    hidden = [table[b].astype(np.float32) for b in calibration_batches(ids)]
    del table  # only the calibration tokens' rows are kept
    source.release()
    bar = progress_bar(cfg.n_layers, verbose=verbose, unit_name="block")
    seconds, weight_map = [], {}
    for i in range(cfg.n_layers):
        start = time.perf_counter()
        own = {k: v for k, v in names.items() if k.startswith(f"model.layers.{i}.")}
        shard = f"block_{i:05d}.safetensors"
        if i < n:
            block = build_llama_block(cfg, i)
            assign_weights(block, tensors, own, source=f"{Path(checkpoint).name!r}")
            source.release()
            hidden = _compress_block(block, hidden, method)
            _write_shard(out / shard, _block_tensors(block, own, out_dtype))
            del block
            # a Keras model sits in reference cycles: freed now, not at Python's next full
            # collection (rare here: few Python objects are made), which let 24 blocks of a
            # 1.7 B-shaped model pile up to 4 GB
            gc.collect()
        else:  # past a partial run: copied as stored
            _write_shard(out / shard, {k: tensors(k) for k in own})
            source.release()
        weight_map |= dict.fromkeys(own, shard)
        seconds.append(time.perf_counter() - start)
        if on_block is not None:
            on_block(i, seconds[-1])
        bar.add(1)
    rest = {k: tensors(k) for k in names if not k.startswith("model.layers.")}
    _write_shard(out / "rest.safetensors", rest)
    weight_map |= dict.fromkeys(rest, "rest.safetensors")
    for name, write in source.files.items():
        with atomic_path(out / name) as tmp:
            write(tmp)
    index = {"metadata": {"tfcompress": {"config": config.get_config(), "blocks": n}},
             "weight_map": weight_map}
    write_atomic(out / "model.safetensors.index.json", json.dumps(index, indent=1, default=str))
    return {"out": str(out), "blocks": n, "seconds": seconds}
