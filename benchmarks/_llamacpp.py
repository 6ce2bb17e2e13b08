"""llama.cpp beside our bundles (`benchmarks/generate.py`): its files, scores and timings, and
the ratios of ours to the llama.cpp file of matching precision.

llama.cpp runs through llama-cpp-python (the ``bench`` extra; built from source). Its files are
made in the run from one GGUF with llama.cpp's own quantizer: F16 from the source (whatever its
type), then every type of `FROM_F16` from that F16, as llama.cpp's docs make them. The pure
parts (`PEERS`, `medians`, `peer_ratios`) need no llama.cpp.

Example:
    >>> llama_cpp = require_llama_cpp()
    >>> files = make_files(llama_cpp, Path("SmolLM2.Q4_1.gguf"), Path("/tmp/scratch"))
    >>> LlamaCppRunner(llama_cpp, files["Q8_0"], threads=2, n_ctx=512).decode(1)  # logits
"""

from __future__ import annotations

import ctypes
import statistics
from pathlib import Path

import numpy as np

from tfcompress.errors import TfcompressError

FROM_F16 = ("Q8_0", "Q4_K_M", "Q4_0")
# our export mode -> the llama.cpp type of matching precision, and the prefix of its ratio keys
PEERS = {"dynamic_int8": ("Q8_0", "int8"), "int4": ("Q4_K_M", "int4")}
TIMED = ("decode_tps", "prefill_tps", "ttft_s")


def require_llama_cpp():
    """The ``llama_cpp`` module, or a `TfcompressError` saying how to install it."""
    try:
        import llama_cpp
    except ImportError as err:
        raise TfcompressError(
            f"benchmarks.generate compares with llama.cpp, but llama_cpp is not importable "
            f"({err}): pip install tfcompress[bench] (llama-cpp-python, built from source), or "
            "run --quick") from None
    return llama_cpp


def source_type(gguf: Path) -> str:
    """The weights' type a GGUF declares (``general.file_type``), e.g. ``"MOSTLY_Q4_1"``."""
    from gguf import LlamaFileType

    from tfcompress.models.loaders.gguf import _field, _reader

    value = _field(_reader(gguf), "general.file_type", None, required=False)
    return "not declared" if value is None else LlamaFileType(int(value)).name


def quantize(llama_cpp, source: Path, target: Path, kind: str, threads: int = 2) -> Path:
    """``source`` quantized to ``kind`` (``"F16"``, ``"Q8_0"``, ...) by llama.cpp, written
    atomically to ``target``."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = threads
    params.allow_requantize = True  # the shipped SmolLM2 GGUF is already quantized (Q4_1)
    part = target.with_suffix(".part")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(part).encode(),
                                      ctypes.byref(params)):
        part.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not quantize {source} to {kind}")
    part.replace(target)
    return target


def make_files(llama_cpp, source: Path, folder: Path) -> dict[str, Path]:
    """F16 from ``source``, then each of `FROM_F16` from that F16, in ``folder``."""
    stem = source.name.split(".")[0]
    files = {"F16": quantize(llama_cpp, source, folder / f"{stem}.F16.gguf", "F16")}
    for kind in FROM_F16:
        files[kind] = quantize(llama_cpp, files["F16"], folder / f"{stem}.{kind}.gguf", kind)
    return files


class LlamaCppRunner:
    """llama.cpp on a GGUF driven as `LLMRunner` drives a bundle (``reset``, ``prefill``,
    ``decode`` -> next-token logits, ``logits``), so one loop times and scores both.

    Example:
        >>> runner = LlamaCppRunner(llama_cpp, Path("model.Q8_0.gguf"), threads=2, n_ctx=512)
        >>> runner.prefill(ids[:-1]); logits = runner.decode(int(ids[-1]))
    """

    def __init__(self, llama_cpp, gguf: Path, threads: int, n_ctx: int,
                 logits_all: bool = False):
        self._lib = llama_cpp
        # logits_all: every position's logits, as `logits` needs (timed runs leave it off:
        # the head over a whole prompt would slow llama.cpp's prefill down)
        self.llm = llama_cpp.Llama(str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, logits_all=logits_all,
                                   verbose=False)

    def reset(self) -> None:
        """Forget every token: the next eval drops the whole KV cache (an empty cache)."""
        self.llm.reset()

    def prefill(self, ids) -> None:
        self.llm.eval([int(t) for t in ids])

    def decode(self, token: int) -> np.ndarray:
        self.llm.eval([int(token)])
        return np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.llm.ctx, -1),
                                     shape=(self.llm.n_vocab(),))

    def logits(self, ids) -> np.ndarray:
        """Next-token logits ``(len(ids), vocab)`` after each of ``ids``, from an empty cache
        (one batch; made with ``logits_all=True``)."""
        self.reset()
        self.prefill(ids)
        return np.array(self.llm.scores[:len(ids)])

    def close(self) -> None:
        self.llm.close()


def medians(runs: list[dict]) -> dict:
    """The median of each of `TIMED` over repeated runs, with every run's figures and load.

    >>> medians([{"decode_tps": 10.0, "prefill_tps": 100.0, "ttft_s": 1.0, "load_avg": 2.0},
    ...          {"decode_tps": 30.0, "prefill_tps": 300.0, "ttft_s": 0.3, "load_avg": 3.0},
    ...          {"decode_tps": 20.0, "prefill_tps": 200.0, "ttft_s": 0.5, "load_avg": 2.5}]
    ...         )["decode_tps"]
    20.0
    """
    if not runs:
        raise ValueError("medians: no runs")
    return {**{k: statistics.median(r[k] for r in runs) for k in TIMED},
            "repeats": len(runs), "load_avg": [r["load_avg"] for r in runs],
            "runs": [{k: r[k] for k in TIMED} for r in runs]}


def peer_ratios(res: dict, float_ppl: float, rows: dict[str, str] | None = None) -> dict:
    """Ours against the llama.cpp file of matching precision (`PEERS`), for each pair that
    both runtimes measured: file size, each one's perplexity over ``float_ppl`` (the float
    Keras model on the same tokens), and decode / prefill tokens/s per thread count.

    ``res`` holds ``file_mb``, ``ppl`` and ``timing`` (``{runtime: {threads: medians}}``),
    each keyed by our mode or ``"llama.cpp <type>"``; ``rows`` names our row standing for a
    `PEERS` mode (default: the mode's own row).
    """
    out: dict = {"decode_vs_llamacpp": {}, "prefill_vs_llamacpp": {}}
    for peer_mode, (kind, prefix) in PEERS.items():
        mode = (rows or {}).get(peer_mode, peer_mode)
        peer = f"llama.cpp {kind}"
        key = kind.lower()
        if mode in res["file_mb"] and peer in res["file_mb"]:
            out[f"{prefix}_mb_vs_{key}"] = res["file_mb"][mode] / res["file_mb"][peer]
        for name, ratio_key in ((mode, f"{prefix}_ppl_ratio"), (peer, f"{key}_ppl_ratio")):
            if name in res["ppl"]:
                out[ratio_key] = res["ppl"][name] / float_ppl
        ours, theirs = res["timing"].get(mode, {}), res["timing"].get(peer, {})
        for threads in sorted(set(ours) & set(theirs)):
            for what in ("decode", "prefill"):
                out[f"{what}_vs_llamacpp"].setdefault(f"{prefix}_vs_{key}", {})[threads] = (
                    ours[threads][f"{what}_tps"] / theirs[threads][f"{what}_tps"])
    return out
