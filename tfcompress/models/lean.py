"""Lean block-wise calibration: GPTQ, SparseGPT or Wanda over a Llama checkpoint too large to
build whole, one block in memory at a time.

`lean_compress` reads a Hugging Face Llama folder's tensors block by block from its
safetensors files (each file memory-mapped only while a tensor is copied out), builds that
one block (`build_llama_block`), streams the calibration activations through it with the
calibration engine (`tfcompress.core.calibrate`, the same ``compress`` the ``quantize`` and
``prune`` verbs use, so the weights match theirs), writes the compressed block as its own
safetensors shard (atomically) and frees it. The embedding table is read once for the
calibration tokens' rows; no float copy of the whole model is ever held. Peak memory is one
float32 block, its input statistics and the activations (tokens x d_ff).

The output folder is a Hugging Face folder again: ``config.json``, ``block_NNNNN.safetensors``
per block (kernels on the quantized grid or with their zeros, ``out_dtype``), ``rest.safetensors``
(embedding, final norm, head as stored), ``model.safetensors.index.json`` and the source's
tokenizer files, so `load_safetensors` loads it.

Example:
    >>> config = QuantizeConfig(method="gptq", bits=4, granularity="group", group_size=128)
    >>> lean_compress("SmolLM2-1.7B/", "runs/smollm2-1.7b-gptq", config, ids)
    >>> model = load_safetensors("runs/smollm2-1.7b-gptq")
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfcompress._extras import require
from tfcompress.core.calibration import calibrate, calibration_batches
from tfcompress.core.files import atomic_path, write_atomic
from tfcompress.core.layers import select_layers
from tfcompress.core.progress import progress_bar
from tfcompress.core.validation import check_token_ids, reading
from tfcompress.errors import TfcompressError
from tfcompress.models.llama import LlamaConfig, assign_weights, build_llama_block, hf_llama_names
from tfcompress.models.loaders.readers import read_config
from tfcompress.models.loaders.safetensors import LLAMA_TYPES, TensorIndex, llama_config_from_hf
from tfcompress.prune.config import PruneConfig
from tfcompress.prune.oneshot import block_pruner, calibration_needs
from tfcompress.quantize.api import QuantizeConfig, gptq_able, gptq_compress

OUT_DTYPES = ("float32", "float16")
EXTRA_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "generation_config.json")


def _method(config) -> tuple[Callable, tuple[str, ...], Callable]:
    """``(compress, needs, select)`` of a one-shot config; other methods raise."""
    if isinstance(config, QuantizeConfig) and config.method == "gptq":
        def select(block):
            chosen = select_layers(block, types=config.types, include=config.include,
                                   exclude=config.exclude, require=False)
            return [(p, la) for p, la in chosen if gptq_able(la)]

        return gptq_compress(config), ("xtx",), select
    if (isinstance(config, PruneConfig) and config.method in ("wanda", "sparsegpt")
            and config.schedule is None and config.scope == "layer"
            and config.pattern not in ("neurons", "heads")):
        def select(block):
            return select_layers(block, config.layer_types, config.include, config.exclude,
                                 require=False)

        return block_pruner(config), calibration_needs(config), select
    raise TfcompressError(
        "config must be QuantizeConfig(method='gptq') or a one-shot unstructured "
        "PruneConfig(method='sparsegpt' or 'wanda', scope='layer', no schedule), got "
        f"{type(config).__name__}({getattr(config, 'method', None)!r})")


def _check(folder, out, config, calibration, out_dtype) -> tuple[LlamaConfig, TensorIndex,
                                                                  np.ndarray, tuple]:
    """Every argument checked before any work; returns the model's shape, its tensors,
    the calibration ids and the method."""
    method = _method(config)
    if out_dtype not in OUT_DTYPES:
        raise TfcompressError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    hf = read_config(folder)
    if hf.get("model_type") not in LLAMA_TYPES:
        raise TfcompressError(f"config.json model_type is {hf.get('model_type')!r}; "
                              f"lean_compress reads {LLAMA_TYPES}")
    with reading(Path(folder) / "config.json", "a llama config (missing or bad key)"):
        cfg = llama_config_from_hf(hf)
    if Path(out).resolve() == Path(folder).resolve():
        raise TfcompressError(f"out must be another folder than the checkpoint's, got {out!r}")
    if Path(out).exists() and any(Path(out).iterdir()):
        raise TfcompressError(f"out {str(out)!r} is not empty: give a new or empty folder")
    tensors = TensorIndex(folder, keep_open=False)
    missing = sorted(set(hf_llama_names(cfg)) - set(tensors.names()))
    if missing:
        raise TfcompressError(f"folder {str(folder)!r} has no tensor {missing[0]!r} "
                              f"({len(missing)} missing)")
    ids = check_token_ids(calibration, "calibration", cfg.vocab_size)
    if isinstance(config, QuantizeConfig):  # group sizes, before any work
        widths = {"attn_q": cfg.d_model, "attn_k": cfg.d_model, "attn_v": cfg.d_model,
                  "attn_out": cfg.n_heads * cfg.head_dim, "mlp_gate": cfg.d_model,
                  "mlp_up": cfg.d_model, "mlp_down": cfg.d_ff}
        for i in range(cfg.n_layers):
            for kind, width in widths.items():
                config.quantizer(f"block{i}_{kind}").group_rows(width)
    return cfg, tensors, ids, method


def _write_shard(path: Path, tensors: dict[str, np.ndarray]) -> None:
    save_file = require("safetensors", extra="llm", feature="lean_compress").numpy.save_file
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


def _compress_block(block, hidden: list, method: tuple, config) -> list[np.ndarray]:
    """Compress ``block`` in place from ``hidden``; returns the next block's inputs (from
    the compressed block, or the float one with ``sequential=False``)."""
    compress, needs, select = method
    dense = None if getattr(config, "sequential", True) else _forward(block, hidden)
    layers = select(block)
    if layers:
        calibrate(block, layers, hidden, compress, needs=needs, sequential=False,
                  max_rows=config.max_rows, verbose=0)
    return dense if dense is not None else _forward(block, hidden)


def lean_compress(folder: str | Path, out: str | Path, config, calibration, *,
                  n_blocks: int | None = None, out_dtype: str = "float32",
                  on_block: Callable[[int, float], None] | None = None,
                  verbose: int = 1) -> dict:
    """Compress a Hugging Face Llama folder block by block into the folder ``out``.

    ``config``: ``QuantizeConfig(method="gptq", ...)`` or a one-shot ``PruneConfig(method=
    "sparsegpt" | "wanda")``; its ``include``/``exclude``/``types``/``max_rows`` apply to
    each block's layers (embeddings and head are copied as they are). ``calibration``:
    token ids ``(windows, seq_len)``, batched as the verbs batch them. ``n_blocks``: compress
    only the first ones and copy the rest (a partial run). ``on_block(index, seconds)`` is
    called after each block. Returns ``{"out", "blocks", "seconds"}`` (seconds per block).
    """
    cfg, tensors, ids, method = _check(folder, out, config, calibration, out_dtype)
    n = cfg.n_layers if n_blocks is None else int(n_blocks)
    if not 0 <= n <= cfg.n_layers:
        raise TfcompressError(f"n_blocks must be in [0, {cfg.n_layers}], got {n_blocks}")
    out = Path(out)
    names = hf_llama_names(cfg)
    table = tensors("model.embed_tokens.weight")
    hidden = [table[b].astype(np.float32) for b in calibration_batches(ids)]
    del table  # only the calibration tokens' rows are kept
    bar = progress_bar(cfg.n_layers, verbose=verbose, unit_name="block")
    seconds, weight_map = [], {}
    for i in range(cfg.n_layers):
        start = time.perf_counter()
        own = {k: v for k, v in names.items() if k.startswith(f"model.layers.{i}.")}
        shard = f"block_{i:05d}.safetensors"
        if i < n:
            block = build_llama_block(cfg, i)
            assign_weights(block, tensors, own, source=f"folder {Path(folder).name!r}")
            hidden = _compress_block(block, hidden, method, config)
            _write_shard(out / shard, _block_tensors(block, own, out_dtype))
            del block
        else:  # past a partial run: copied as stored
            _write_shard(out / shard, {k: tensors(k) for k in own})
        weight_map |= dict.fromkeys(own, shard)
        seconds.append(time.perf_counter() - start)
        if on_block is not None:
            on_block(i, seconds[-1])
        bar.add(1)
    rest = {k: tensors(k) for k in names if not k.startswith("model.layers.")}
    _write_shard(out / "rest.safetensors", rest)
    weight_map |= dict.fromkeys(rest, "rest.safetensors")
    for extra in ("config.json", *EXTRA_FILES):
        if (Path(folder) / extra).is_file():
            with atomic_path(out / extra) as tmp:
                shutil.copyfile(Path(folder) / extra, tmp)
    index = {"metadata": {"tfcompress": {"config": config.get_config(), "blocks": n}},
             "weight_map": weight_map}
    write_atomic(out / "model.safetensors.index.json", json.dumps(index, indent=1, default=str))
    return {"out": str(out), "blocks": n, "seconds": seconds}
