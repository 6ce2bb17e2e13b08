"""SmolLM2-135M on the phone path: prefill/decode ``.tflite`` bundles (float16, dynamic_int8,
int4 from GPTQ on LiteRT's int4 grid, or on affine groups of 128 with ``--int4-grid g128``)
vs the old window-recompute path, LiteRT-LM's engine and llama.cpp.

Each bundle is measured in a fresh process (2 threads; dynamic_int8 also on 1): time to first
token for a 128-token prompt, prefill tokens/s (128 / TTFT), decode tokens/s over 128 new
tokens, and the peak RSS the runtime adds on top of the process's imports. llama.cpp
(``llama-cpp-python``, in the ``bench`` extra; built from source) runs the same GGUF at Q8_0
(quantized once into the cache folder) and Q4_1, timed the same way. Perplexity of each export
is computed on the first 2,049 tokens of austen/test.txt in windows of 256 (as
benchmarks/llm.py) and compared with its Keras model (`REFERENCE`). The machine is shared:
timings are noisy, and each records the load average it ran under.

    python -m benchmarks.generate                  # writes results/generate.json
    python -m benchmarks.generate --modes dynamic_int8 --skip-window
    python -m benchmarks.generate --modes int4 --skip-window --name generate_int4 \
        --merge benchmarks/results/generate.json  # int4 added to a run on this commit
    python -m benchmarks.generate --quick          # a tiny random Llama, float16 only
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import bench_parser, merge_source, parse_args, scratch_dir, write_results
from benchmarks.llm import eval_sizes, gguf_path

ROOT = Path(__file__).resolve().parents[1]

PROMPT, NEW, THREADS, CACHE, PREFILL = 128, 128, 2, 512, (32, 128)
GREEDY = 64
# how every note this script writes starts (the last four are rewritten at each write)
NOTES = ("int4:", "greedy ", "llama.cpp:", "LiteRT-LM:", "timing:", "not measured:")
QUICK_GREEDY = 8  # --quick: the Keras model generates eagerly, one full forward per token
MODES = ("dynamic_int8", "float16", "int4")
# the Keras model each export is judged against (`keras_ppl` keys): the one whose weights it
# carries. dynamic_int8 of a float model stores int8 per-channel weights, so its Keras model is
# the float model with those weights (symmetric RTN int8 per channel on every Dense), leaving
# what the runtime adds (activations quantized on the fly, the int8 embedding table)
REFERENCE = {"float16": "float", "dynamic_int8": "rtn_int8_channel", "int4": "gptq_litert_int4"}
# --int4-grid: GPTQ's grid for the int4 bundle. "litert" is LiteRT's own blockwise int4
# (`QuantizeConfig.litert_int4`: export_llm keeps its codes exactly); "g128" is affine groups
# of 128 (export_llm re-rounds it onto LiteRT's grid)
INT4_GRIDS = {"litert": "gptq_litert_int4", "g128": "gptq_g128"}


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def measure(bundle: str, prompt_file: str, greedy: str | int = GREEDY,
            threads: str | int = THREADS) -> dict:
    """Run in a fresh process: TTFT, prefill/decode tokens/s, the first ``greedy`` ids, runtime
    peak RSS (of llama.cpp when ``bundle`` is a ``.gguf``)."""
    from tfcompress.export.llm_runner import LLMRunner

    prompt = np.load(prompt_file)
    if bundle.endswith(".gguf"):
        import llama_cpp

        return llamacpp_speed(llama_cpp, Path(bundle), prompt, int(threads))
    baseline = _vm_hwm_mb()
    runner = LLMRunner(bundle, num_threads=int(threads))
    stats = {}
    for _ in range(2):  # the first round warms XNNPACK's weight packing up
        runner.reset()
        start = time.perf_counter()
        runner.prefill(prompt[:-1])
        token = int(np.argmax(runner.decode(int(prompt[-1]))))
        ttft = time.perf_counter() - start
        ids = [token]
        start = time.perf_counter()
        for _ in range(NEW - 1):
            token = int(np.argmax(runner.decode(token)))
            ids.append(token)
        decode_s = time.perf_counter() - start
        stats = {"ttft_s": ttft, "prefill_tps": len(prompt) / ttft,
                 "decode_tps": (NEW - 1) / decode_s, "greedy": ids[:int(greedy)],
                 "load_avg": os.getloadavg()[0]}
    peak = _vm_hwm_mb()
    return {**stats, "baseline_mb": baseline, "peak_mb": peak, "runtime_mb": peak - baseline}


def _subprocess_measure(bundle: Path, prompt_file: Path, greedy: int = GREEDY,
                        threads: int = THREADS) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.generate", "--measure",
                           str(bundle), str(prompt_file), str(greedy), str(threads)], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"measuring {bundle} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def exported_perplexity(bundle: Path, ids: np.ndarray, window: int) -> float:
    """Perplexity through the bundle's decode signature, windows of ``window`` from an empty
    cache each (the protocol of `causal_lm_perplexity`)."""
    from tfcompress.export.llm_runner import LLMRunner
    from tfcompress.models import causal_lm_perplexity

    runner = LLMRunner(bundle, num_threads=THREADS)
    return causal_lm_perplexity(lambda x: runner.logits(x[0])[None], ids, window,
                                verbose=True)["perplexity"]


def keras_perplexity(model, ids: np.ndarray, window: int) -> float:
    from tfcompress.evaluate import keras_forward
    from tfcompress.models import causal_lm_perplexity

    return causal_lm_perplexity(keras_forward(model), ids, window)["perplexity"]


def keras_generation_s(model, prompt: np.ndarray, tokens: int = 30) -> float:
    """Seconds for greedy generation of ``tokens`` with the Keras model (context grows)."""
    from tfcompress.evaluate import keras_forward
    from tfcompress.models import generate

    forward = keras_forward(model)
    generate(forward, prompt[:8], 2)  # trace once
    start = time.perf_counter()
    generate(forward, prompt[:32], tokens)
    return time.perf_counter() - start


def gptq_model(float_model, tokenizer, calib: int, grid: str = "litert"):
    from benchmarks.llm import BLOCK_DENSE
    from tfcompress.data import bundled_corpus
    from tfcompress.quantize import QuantizeConfig, quantize

    ids = tokenizer.encode(bundled_corpus("austen")["train"][:400_000])
    starts = np.random.default_rng(0).integers(0, ids.size - 256, calib)
    windows = np.stack([ids[s:s + 256] for s in starts])
    if grid == "litert":
        config = QuantizeConfig.litert_int4("gptq", types=("Dense",), include=BLOCK_DENSE,
                                            sequential=False)
    else:
        config = QuantizeConfig(method="gptq", bits=4, types=("Dense",), include=BLOCK_DENSE,
                                granularity="group", group_size=128, ragged=True,
                                sequential=False)
    return quantize(float_model, config, calibration=[windows[i:i + 4]
                                                      for i in range(0, calib, 4)])


def rtn_int8_model(float_model):
    """The float model with the weights a dynamic_int8 export stores (see `REFERENCE`)."""
    from tfcompress.quantize import QuantizeConfig, cache_decoded, quantize

    config = QuantizeConfig(method="rtn", scheme="symmetric", bits=8, granularity="channel",
                            types=("Dense",))
    return cache_decoded(quantize(float_model, config, verbose=0))


def window_path(model, out: Path) -> dict:
    """The old route: a dynamic-int8 (1, 256) window re-run for every new token."""
    from tfcompress.export import TFLiteRunner, export_tflite

    path = out / "window_256.tflite"
    export_tflite(model, path, mode="dynamic_int8", seq_len=PROMPT + NEW, verify_output=False,
                  verbose=False)
    runner = TFLiteRunner(path, num_threads=THREADS)
    stats = runner.latency(warmup=2, repeats=5)
    return {"window": PROMPT + NEW, "median_ms": stats["median_ms"],
            "decode_tps": 1e3 / stats["median_ms"]}


def litertlm_engine(bundle: Path, prompt_text: str) -> dict:
    """Our bundle as a .litertlm in LiteRT-LM's engine: greedy text vs `LLMRunner` on the
    same prompt text, and the engine's own benchmark (prefill and decode tokens/s)."""
    try:
        import litert_lm
    except ImportError as err:
        return {"error": f"litert-lm-api not importable ({err}); pip install .[litertlm]"}
    from tfcompress.export.litertlm import write_litertlm
    from tfcompress.export.llm_runner import LLMRunner

    ours = "".join(LLMRunner(bundle, num_threads=THREADS).generate(prompt_text, GREEDY))
    path = write_litertlm(bundle)
    try:
        with litert_lm.Engine(str(path), max_num_tokens=CACHE) as engine:
            session = engine.create_session(apply_prompt_template=False,
                                            max_output_tokens=GREEDY,
                                            sampler_config=litert_lm.SamplerConfig(top_k=1))
            session.run_prefill([prompt_text])
            theirs = session.run_decode().texts[0]
        info = litert_lm.Benchmark(str(path), prefill_tokens=PROMPT, decode_tokens=NEW,
                                   max_num_tokens=CACHE,
                                   backend=litert_lm.Backend.CPU(thread_count=THREADS)).run()
        return {"greedy_match": theirs == ours, "text": theirs, "ours": ours,
                "prefill_tps": info.last_prefill_tokens_per_second,
                "decode_tps": info.last_decode_tokens_per_second,
                "ttft_s": info.time_to_first_token_in_second}
    except Exception as err:  # the engine's own error is the result to report
        return {"error": f"{type(err).__name__}: {err}"}


LLAMACPP_TYPES = ("Q8_0", "Q4_1")


def llamacpp_gguf(llama_cpp, source: Path, kind: str) -> Path:
    """``source`` if its weights already are ``kind`` (``"Q8_0"``, ``"Q4_1"``), else a copy
    quantized to ``kind`` by llama.cpp in the cache folder (made once)."""
    from tfcompress.models.loaders.gguf import _field, _reader
    from tfcompress.models.training import cache_dir

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    if _field(_reader(source), "general.file_type", None, required=False) == ftype:
        return source
    target = cache_dir() / f"{source.stem.rsplit('.', 1)[0]}.{kind}.gguf"
    if not target.is_file():
        import ctypes

        target.parent.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = ftype, THREADS
        params.allow_requantize = True  # the installed SmolLM2 GGUF is already Q4_1
        tmp = target.with_suffix(".part")
        if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(),
                                          ctypes.byref(params)):
            raise RuntimeError(f"llama.cpp could not quantize {source} to {kind}")
        tmp.replace(target)
    return target


def llamacpp_speed(llama_cpp, gguf: Path, prompt: np.ndarray, threads: int) -> dict:
    """llama.cpp on ``gguf``, timed as `measure` times ours: TTFT of the prompt (one batch),
    then greedy decoding of `NEW` tokens one at a time; the second of two rounds."""
    llm = llama_cpp.Llama(str(gguf), n_ctx=CACHE, n_batch=CACHE, n_threads=threads,
                          n_threads_batch=threads, verbose=False)

    def argmax() -> int:
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1),
                                                   shape=(llm.n_vocab(),))))

    stats = {}
    for _ in range(2):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt.tolist())
        token = argmax()
        ttft = time.perf_counter() - start
        ids = [token]
        start = time.perf_counter()
        for _ in range(NEW - 1):
            llm.eval([token])
            token = argmax()
            ids.append(token)
        decode_s = time.perf_counter() - start
        stats = {"ttft_s": ttft, "prefill_tps": len(prompt) / ttft,
                 "decode_tps": (NEW - 1) / decode_s, "greedy": ids[:GREEDY],
                 "file_mb": gguf.stat().st_size / 1e6, "threads": threads,
                 "load_avg": os.getloadavg()[0]}
    llm.close()
    return stats


def llamacpp(gguf: Path, prompt_file: Path) -> dict:
    """llama.cpp (llama-cpp-python) on the same GGUF at Q8_0 and Q4_1, `THREADS` threads;
    Q8_0 also on one thread. Each in a fresh process, as ours: in this one, threads left by
    TensorFlow and LiteRT-LM's engine compete with llama.cpp's spin-waiting OpenMP threads."""
    try:
        import llama_cpp
    except ImportError:
        return {"error": "llama-cpp-python is not installed: pip install .[bench] (it has no "
                         "wheel: pip builds llama.cpp from source)"}
    res = {}
    for kind, threads in (("Q8_0", THREADS), ("Q4_1", THREADS), ("Q8_0", 1)):
        path = llamacpp_gguf(llama_cpp, gguf, kind)
        key = kind if threads == THREADS else f"{kind}_1thread"
        res[key] = _subprocess_measure(path, prompt_file, threads=threads)
    res["version"] = llama_cpp.__version__
    return res


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("generate", __doc__)
    parser.add_argument("--modes", nargs="+", choices=MODES,
                        help="default: all (--quick: float16)")
    parser.add_argument("--gguf", help="a Llama GGUF instead of the installed SmolLM2")
    parser.add_argument("--out", default="runs/generate")
    parser.add_argument("--calib", type=int, default=16, help="GPTQ calibration windows")
    parser.add_argument("--skip-window", action="store_true")
    parser.add_argument("--int4-grid", choices=sorted(INT4_GRIDS), default="litert",
                        help="GPTQ's grid for the int4 bundle (default: LiteRT's own)")
    parser.add_argument("--merge", help="results file (benchmarks/results/) of an earlier run on "
                        "this commit (other modes) to extend")
    parser.add_argument("--name", default="generate", help="results file name")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parse_args(parser, argv)
    args.modes = args.modes or (["float16"] if args.quick else list(MODES))
    args.skip_window = args.skip_window or args.quick
    if args.quick:
        args.out = str(scratch_dir("generate-quick-"))
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return

    from tfcompress.data import bundled_corpus
    from tfcompress.evaluate import keras_forward
    from tfcompress.export import export_llm
    from tfcompress.models import generate
    from tfcompress.models.loaders import gguf_tokenizer, load_gguf
    from tfcompress.quantize import cache_decoded

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    gguf = gguf_path(args)
    tokenizer = gguf_tokenizer(gguf)
    model = load_gguf(gguf)
    text = bundled_corpus("austen")["test"]
    eval_tokens, window = eval_sizes(args.quick)
    eval_ids = tokenizer.encode(text[:20_000])[:eval_tokens]
    prompt = tokenizer.encode(text[30_000:40_000])[:PROMPT]
    prompt_text = tokenizer.decode(prompt.tolist())
    prompt_file = out / "prompt.npy"
    np.save(prompt_file, prompt)
    res: dict = {"decode_tps": {}, "prefill_tps": {}, "ttft_s": {}, "file_mb": {},
                 "runtime_rss_mb": {}, "ppl": {}, "keras_ppl": {}, "ppl_ratio_vs_keras": {},
                 "notes": [], "seconds": {}}
    if args.merge:
        res = merge_source(args.merge, args)
        res["notes"] = [n for n in res["notes"] if n.startswith(NOTES)]  # only what code wrote
    greedy = QUICK_GREEDY if args.quick else GREEDY
    keras_greedy = generate(keras_forward(model), prompt, greedy)
    res["keras_greedy"] = keras_greedy[:greedy]
    if "float" not in res["keras_ppl"]:
        res["keras_ppl"]["float"] = keras_perplexity(model, eval_ids, window)
    quantized = None
    for mode in args.modes:
        source = model
        if mode == "int4":
            start = time.perf_counter()
            quantized = gptq_model(model, tokenizer, args.calib, args.int4_grid)
            res["seconds"]["gptq"] = time.perf_counter() - start
            reference = INT4_GRIDS[args.int4_grid]
            res["keras_ppl"][reference] = keras_perplexity(quantized, eval_ids, window)
            source = quantized
        if mode == "dynamic_int8" and REFERENCE[mode] not in res["keras_ppl"]:
            res["keras_ppl"][REFERENCE[mode]] = keras_perplexity(rtn_int8_model(model), eval_ids)
        start = time.perf_counter()
        bundle = out / mode
        # export_llm's own check (on text) as users get it; perplexity is measured below too
        result = export_llm(source, bundle, prefill_lengths=PREFILL, cache_length=CACHE,
                            mode=mode, tokenizer=gguf)
        res["seconds"][f"export_{mode}"] = time.perf_counter() - start
        if result.int4 is not None:
            res["int4_layers"] = result.int4
            res["notes"] = [n for n in res["notes"] if not n.startswith("int4:")]
            res["notes"].append(
                f"int4: GPTQ on {args.int4_grid} grid; {len(result.int4['copied'])} quantized "
                f"matmuls keep their codes exactly, {len(result.int4['rerounded'])} re-rounded "
                f"onto LiteRT's blockwise int4; embedding {result.int4['embedding']}; the head "
                "int8 per channel; activations quantized on the fly by the runtime")
        gc.collect()
        m = _subprocess_measure(bundle, prompt_file, greedy)
        res["decode_tps"][mode], res["prefill_tps"][mode] = m["decode_tps"], m["prefill_tps"]
        res["ttft_s"][mode], res["runtime_rss_mb"][mode] = m["ttft_s"], m["runtime_mb"]
        res.setdefault("measured", {})[mode] = {k: v for k, v in m.items() if k != "greedy"}
        res["file_mb"][mode] = result.bytes / 1e6
        res[f"greedy_{mode}"] = m["greedy"]
        start = time.perf_counter()
        res["ppl"][mode] = exported_perplexity(bundle, eval_ids, window)
        res["seconds"][f"ppl_{mode}"] = time.perf_counter() - start
        ref = res["keras_ppl"][reference if mode == "int4" else REFERENCE[mode]]
        res["ppl_ratio_vs_keras"][mode] = res["ppl"][mode] / ref
        res.setdefault("ppl_ratio_vs_float", {})[mode] = res["ppl"][mode] / res["keras_ppl"][
            "float"]
        print(f"== {mode}: {json.dumps({k: v for k, v in m.items() if k != 'greedy'})}, "
              f"ppl {res['ppl'][mode]:.3f} (Keras {ref:.3f})", flush=True)
        if mode == "dynamic_int8":  # one thread too: llama.cpp's Q8_0 is also timed on one
            one = _subprocess_measure(bundle, prompt_file, threads=1)
            res["measured"]["dynamic_int8_1thread"] = {k: v for k, v in one.items()
                                                       if k != "greedy"}
            res["litertlm"] = litertlm_engine(bundle, prompt_text)
            print(f"== LiteRT-LM engine: {res['litertlm']}", flush=True)
            # the peers right after ours, so that all see about the same machine load
            if not args.quick:  # the tiny random GGUF has no llama.cpp form worth timing
                res["llamacpp"] = llamacpp(gguf, prompt_file)
            if not args.skip_window:
                res["window"] = window_path(model, out)
        _write(res, args)

    res["notes"] = [n for n in res["notes"] if not n.startswith("greedy ")]  # a merged run's
    for mode in ("float16", "dynamic_int8"):
        ours = res.get(f"greedy_{mode}")
        if ours is not None:
            same = next((i for i, (a, b) in enumerate(zip(ours, keras_greedy, strict=False))
                         if a != b), greedy)
            res[f"greedy_same_prefix_{mode}"] = same
            res["notes"].append(f"greedy {mode} export vs Keras float32 (prompt of {PROMPT}): "
                                f"first {same} of {greedy} tokens identical")
    if quantized is not None and "greedy_int4" in res:  # the int4 bundle vs its own Keras model
        ours = res["greedy_int4"]
        theirs = generate(keras_forward(cache_decoded(quantized)), prompt, greedy)[:greedy]
        cache_decoded(quantized, enabled=False)  # timed below decoding its codes
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                    greedy)
        res["greedy_same_prefix_int4"] = same
        res["notes"].append(f"greedy int4 export vs its Keras GPTQ model (prompt of {PROMPT}): "
                            f"first {same} of {greedy} tokens identical")
    float16 = res.get("greedy_float16")
    res["greedy_match_keras"] = None if float16 is None else float16 == keras_greedy[:greedy]
    if quantized is not None:
        res["keras_generate_30_s"] = {
            "float": keras_generation_s(model, prompt),
            "gptq_decoding_codes": keras_generation_s(quantized, prompt),
            "gptq_cache_decoded": keras_generation_s(cache_decoded(quantized), prompt)}
    res["seconds"]["total"] = time.perf_counter() - started
    _write(res, args)


def _fmt(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ratio(a, b):
    return None if a is None or b is None else a / b


def _write(res: dict, args) -> None:
    dec, pre, size = res["decode_tps"], res["prefill_tps"], res["file_mb"]
    lrt, lcpp = res.get("litertlm", {}), res.get("llamacpp", {})
    res["int8_decode_vs_window"] = _ratio(dec.get("dynamic_int8"),
                                          res.get("window", {}).get("decode_tps"))
    res["int4_size_vs_int8"] = _ratio(size.get("int4"), size.get("dynamic_int8"))
    res["peak_rss_vs_file"] = max((res["runtime_rss_mb"][m] / size[m] for m in size),
                                  default=None)
    q8 = lcpp.get("Q8_0", {})
    res["int8_decode_vs_llamacpp_q8"] = _ratio(dec.get("dynamic_int8"), q8.get("decode_tps"))
    one = res.get("measured", {}).get("dynamic_int8_1thread", {})
    res["int8_decode_vs_llamacpp_q8_1thread"] = _ratio(
        one.get("decode_tps"), lcpp.get("Q8_0_1thread", {}).get("decode_tps"))
    res["int8_prefill_vs_llamacpp_q8"] = _ratio(pre.get("dynamic_int8"), q8.get("prefill_tps"))
    res["litertlm_greedy_match"] = lrt.get("greedy_match")
    res.setdefault("greedy_match_keras", None)
    auto = NOTES[2:]
    notes = [n for n in res["notes"] if not n.startswith(auto)]
    loads = [r["load_avg"] for r in [*res.get("measured", {}).values(),
                                      *(v for v in lcpp.values() if isinstance(v, dict))]]
    if loads:
        notes.append(f"timing: 1-minute load average {min(loads):.1f}-{max(loads):.1f} on "
                     f"{os.cpu_count()} cores while timing")
    if "error" in lcpp:
        notes.append(f"llama.cpp: {lcpp['error']}")
    if "error" in lrt:
        notes.append(f"LiteRT-LM: {lrt['error']}")
    missing = [m for m in MODES if m not in dec]
    if missing or "window" not in res:
        notes.append(f"not measured: modes {missing}{'' if 'window' in res else ', window path'}")
    res["notes"] = notes
    lines = ["| runtime | file MB | prefill tok/s | TTFT s | decode tok/s | runtime RSS MB | "
             "ppl | ppl / Keras |", "|---|---|---|---|---|---|---|---|"]
    for mode in dec:
        lines.append(f"| ours {mode} | {size[mode]:.1f} | {pre[mode]:.1f} | "
                     f"{res['ttft_s'][mode]:.3f} | {dec[mode]:.1f} | "
                     f"{res['runtime_rss_mb'][mode]:.0f} | {res['ppl'].get(mode, 0):.3f} | "
                     f"{res['ppl_ratio_vs_keras'].get(mode, 0):.4f} |")
    if one:
        lines.append(f"| ours dynamic_int8 (1 thread) | - | {one['prefill_tps']:.1f} | "
                     f"{one['ttft_s']:.3f} | {one['decode_tps']:.1f} | - | - | - |")
    if "window" in res:
        lines.append(f"| window path dynamic_int8 ({res['window']['window']} tokens) | - | - | - "
                     f"| {res['window']['decode_tps']:.1f} | - | - | - |")
    rows = [("LiteRT-LM engine (our .litertlm)", lrt)]
    rows += [(f"llama.cpp {kind} ({lcpp[kind]['threads']} thread"
              f"{'s' if lcpp[kind]['threads'] > 1 else ''})", lcpp[kind])
             for kind in (*LLAMACPP_TYPES, "Q8_0_1thread") if kind in lcpp]
    if "error" in lcpp:
        rows.append(("llama.cpp", lcpp))
    for name, r in rows:
        if r:
            lines.append(f"| {name} | {_fmt(r.get('file_mb'))} | {_fmt(r.get('prefill_tps'))} | "
                         f"{_fmt(r.get('ttft_s'), 3)} | {_fmt(r.get('decode_tps'))} | - | - | - |"
                         + (f" {r['error']}" if "error" in r else ""))
    write_results(args.name, "\n".join(lines), res, args)


if __name__ == "__main__":
    main()
