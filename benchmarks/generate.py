"""SmolLM2-135M on the phone path: prefill/decode ``.tflite`` bundles (float16, dynamic_int8,
int4 from GPTQ on LiteRT's int4 grid, or on affine groups of 128 with ``--int4-grid g128``;
and of the rotated model, `ROTATED`: QuaRot with the online Hadamard before each down
projection as `benchmarks.rotation`'s ``online`` source, then dynamic_int8, GPTQ act-order
int4, and that int4 with int8 maps bought under ``budget_mb``) beside llama.cpp's files of the
same GGUF, the old window-recompute path and LiteRT-LM's engine.

llama.cpp (``llama-cpp-python``, in the ``bench`` extra; built from source) makes its files in
the run with its own quantizer (F16 from the shipped GGUF, then Q8_0, Q4_K_M and Q4_0 from that
F16; `benchmarks._llamacpp`) in a scratch folder removed afterwards. Every file is scored on the
same token ids: the first 2,049 tokens of austen/test.txt in windows of 256, each from an empty
cache (as benchmarks/llm.py), as a ratio to the float Keras model's perplexity on them; ours
also against the Keras model whose weights they carry (`REFERENCE`).

Every bundle and llama.cpp file (but F16) is timed in a fresh process on 1 and 2 threads,
interleaved, `REPEATS` times (medians): time to first token for a 128-token prompt, prefill
tokens/s (128 / TTFT), decode tokens/s over 128 greedy tokens, and the peak RSS the runtime
adds on top of the process's imports. Ours is matched with llama.cpp's file of the same
precision (int8 with Q8_0, int4 with Q4_K_M) in the ``*_vs_*`` ratios, through the row of
that precision `best_rows` picks (``peer_rows`` says which), and ``<name>_size.png`` plots
perplexity ratio against file size. Our bundles carry a 256-position cache bucket
(`BUCKETS`), which these lengths run on (``decode_cache_read``: the cache length the
runner's last step read). ``decode_4096_vs_256``: `benchmarks.decode_cache`'s measure of a
4,096-token bundle with the library's buckets against a 256-token one, 128 tokens in
(`cache_lengths`). The machine may be shared: each timing records the load average it ran
under, and the results the load over the whole run. Each bundle is made and scored in a
process of its own (`export_row`), so the run's memory is one export's, not their sum.

    python -m benchmarks.generate                  # writes results/generate.json
    python -m benchmarks.generate --modes dynamic_int8 --skip-window --repeats 1
    python -m benchmarks.generate --modes rotated_int4_budget --budget-mb 100
    python -m benchmarks.generate --quick          # a tiny random Llama, float16, no llama.cpp
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    bench_parser,
    merge_source,
    parse_args,
    results_dir,
    scratch_dir,
    write_results,
)
from benchmarks._llamacpp import (
    FROM_F16,
    PEERS,
    LlamaCppRunner,
    make_files,
    medians,
    peer_ratios,
    require_llama_cpp,
    source_type,
)
from benchmarks._readme import generate_table
from benchmarks.llm import eval_sizes, gguf_path
from tfcompress.core.files import write_atomic
from tfcompress.errors import TfcompressError

ROOT = Path(__file__).resolve().parents[1]

PROMPT, NEW, CACHE, PREFILL = 128, 128, 512, (32, 128)
# export_llm's cache_buckets: a 128-token prompt and 128 new tokens (positions < 256), and
# each perplexity window of 256, run on the 256-position signatures, so a decode step reads
# the cache the tokens fill, not CACHE's 512 positions (as llama.cpp reads only filled ones)
BUCKETS = (256,)
# decode_4096_vs_256 (`benchmarks.decode_cache`'s bundles): a 4,096-token cache with the
# library's buckets ("auto") against a 256-token one, 128 tokens in
LENGTHS = ("cache_256", "cache_4096_buckets")
THREADS = 2  # perplexity through the bundles, the window path and LiteRT-LM's engine
THREAD_COUNTS, REPEATS = ("1", "2"), 3  # every runtime is timed on each, interleaved
GREEDY = 64
# how every note this script writes starts (the last two are rewritten at each write)
NOTES = ("int4:", "rotated", "greedy ", "LiteRT-LM:", "not measured:")
QUICK_GREEDY = 8  # --quick: the Keras model generates eagerly, one full forward per token
# the rotated model's bundles (rotated_gptq_int8: GPTQ act-order int8 per channel, exported
# dynamic_int8; rotated_int4_budget: within --budget-mb, by default the size of llama.cpp's
# Q4_K_M made in the run, int8 maps rounded from the rotated float weights)
ROTATED = ("rotated_dynamic_int8", "rotated_gptq_int8", "rotated_int4", "rotated_int4_budget")
MODES = ("dynamic_int8", "float16", "int4", *ROTATED)
# our rows of each precision that `best_rows` chooses from, keyed as `_llamacpp.PEERS`
PRECISION = {"dynamic_int8": ("dynamic_int8", "rotated_dynamic_int8", "rotated_gptq_int8"),
             "int4": ("int4", "rotated_int4", "rotated_int4_budget")}
# the Keras model each export is judged against (`keras_ppl` keys): the one whose weights it
# carries. dynamic_int8 of a float model stores int8 per-channel weights, so its Keras model is
# the float model with those weights (symmetric RTN int8 per channel on every Dense), leaving
# what the runtime adds (activations quantized on the fly, the int8 embedding table); the
# budget bundle's is GPTQ's codes where int4 stayed and the float weights where int8 was
# bought (`export_llm.reference_logits`)
REFERENCE = {"float16": "float", "dynamic_int8": "rtn_int8_channel", "int4": "gptq_litert_int4",
             "rotated_dynamic_int8": "rotated_rtn_int8_channel",
             "rotated_gptq_int8": "rotated_gptq_act_litert_int8_channel",
             "rotated_int4": "rotated_gptq_act_litert_int4",
             "rotated_int4_budget": "rotated_budget_carried"}
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
    peak RSS, of our bundle or (a ``.gguf``) of llama.cpp driven the same way."""
    prompt = np.load(prompt_file)
    baseline = _vm_hwm_mb()
    runner = open_runner(Path(bundle), int(threads))
    stats = {}
    for _ in range(2):  # the first round warms up (XNNPACK packs its weights)
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
                 "load_avg": os.getloadavg()[0],
                 # the cache length the last step ran on (our bundles: its bucket)
                 "cache_read": getattr(runner, "bucket", None)}
    peak = _vm_hwm_mb()
    return {**stats, "baseline_mb": baseline, "peak_mb": peak, "runtime_mb": peak - baseline}


def open_runner(path: Path, threads: int, logits_all: bool = False):
    """`LLMRunner` on our bundle, or `LlamaCppRunner` on a ``.gguf`` (cache of `CACHE`)."""
    if path.suffix == ".gguf":
        return LlamaCppRunner(require_llama_cpp(), path, threads, CACHE, logits_all)
    from tfcompress.export.llm_runner import LLMRunner

    return LLMRunner(path, num_threads=threads)


def _subprocess_measure(bundle: Path, prompt_file: Path, greedy: int = GREEDY,
                        threads: int = THREADS) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.generate", "--measure",
                           str(bundle), str(prompt_file), str(greedy), str(threads)], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"measuring {bundle} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def exported_perplexity(bundle: Path, ids: np.ndarray, window: int,
                        threads: int = THREADS) -> float:
    """Perplexity through our bundle's decode signature or llama.cpp (a ``.gguf``), windows of
    ``window`` from an empty cache each (the protocol of `causal_lm_perplexity`)."""
    from tfcompress.models import causal_lm_perplexity

    runner = open_runner(bundle, threads, logits_all=True)
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


def calibration_windows(tokenizer, calib: int) -> np.ndarray:
    """``calib`` windows of 256 token ids drawn (seed 0) from austen/train.txt: GPTQ's and the
    budget's calibration."""
    from tfcompress.data import bundled_corpus

    ids = tokenizer.encode(bundled_corpus("austen")["train"][:400_000])
    starts = np.random.default_rng(0).integers(0, ids.size - 256, calib)
    return np.stack([ids[s:s + 256] for s in starts])


def gptq_model(float_model, tokenizer, calib: int, grid: str = "litert",
               act_order: bool = False):
    """GPTQ (one calibration pass over the float model, ``sequential=False``) of the blocks'
    matmuls onto ``grid`` (``"litert_int8"``: int8 per output channel, what a dynamic_int8
    export stores); ``act_order``: columns by decreasing Hessian diagonal."""
    from benchmarks.llm import BLOCK_DENSE
    from tfcompress.quantize import GPTQConfig, QuantizeConfig, quantize

    windows = calibration_windows(tokenizer, calib)
    if grid == "litert_int8":
        config = GPTQConfig(scheme="litert", bits=8, granularity="channel", types=("Dense",),
                            include=BLOCK_DENSE, sequential=False, act_order=act_order)
    elif grid == "litert":
        config = QuantizeConfig.litert_int4("gptq", types=("Dense",), include=BLOCK_DENSE,
                                            sequential=False, act_order=act_order)
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


def interleaved_timings(targets: dict[str, Path], prompt_file: Path, greedy: int,
                        repeats: int) -> dict[str, dict[str, list[dict]]]:
    """``{runtime: {threads: [one measure per repeat]}}``: every runtime on every thread count
    of `THREAD_COUNTS`, in turn, ``repeats`` rounds, so that all see about the same load."""
    runs = {name: {t: [] for t in THREAD_COUNTS} for name in targets}
    total, done = repeats * len(THREAD_COUNTS) * len(targets), 0
    for _ in range(repeats):
        for threads in THREAD_COUNTS:
            for name, path in targets.items():
                m = _subprocess_measure(path, prompt_file, greedy, int(threads))
                runs[name][threads].append(m)
                done += 1
                print(f"== timing {done}/{total}: {name}, {threads} thread(s): decode "
                      f"{m['decode_tps']:.1f} tok/s, prefill {m['prefill_tps']:.1f} tok/s "
                      f"(load {m['load_avg']:.1f})", flush=True)
    return runs


def llamacpp_files(gguf: Path, folder: Path, ids: np.ndarray, window: int, res: dict
                   ) -> dict[str, Path]:
    """llama.cpp's files of ``gguf`` made in ``folder``, each scored on ``ids`` into ``res``;
    returns the ones to time (all but F16)."""
    llama_cpp = require_llama_cpp()
    start = time.perf_counter()
    files = make_files(llama_cpp, gguf, folder)
    res["seconds"]["llamacpp_quantize"] = time.perf_counter() - start
    res["llamacpp"] = {"version": llama_cpp.__version__, "source": gguf.name,
                       "source_type": source_type(gguf),
                       "made_from": {"F16": gguf.name, **{k: "F16" for k in FROM_F16}}}
    for kind, path in files.items():
        name = f"llama.cpp {kind}"
        res["file_mb"][name] = path.stat().st_size / 1e6
        start = time.perf_counter()
        # one thread: llama.cpp's spin-waiting threads stall when other processes keep the
        # cores busy (a window of 256 took 12 s on 2 threads, 5 s on 1, at load 7); not timed
        res["ppl"][name] = exported_perplexity(path, ids, window, threads=1)
        res["seconds"][f"ppl_{name}"] = time.perf_counter() - start
        print(f"== {name}: {res['file_mb'][name]:.1f} MB, ppl {res['ppl'][name]:.3f}",
              flush=True)
    return {f"llama.cpp {k}": files[k] for k in FROM_F16}


# the export_llm mode of each row
EXPORT_MODE = {m: "int4" if "int4" in m else "dynamic_int8" if "int8" in m else m for m in MODES}


def reference_name(mode: str, args) -> str:
    """The `keras_ppl` key of the Keras model the ``mode`` bundle is judged against."""
    return INT4_GRIDS[args.int4_grid] if mode == "int4" else REFERENCE[mode]


def bundle_source(mode: str, models: dict, args, tokenizer, ids: np.ndarray, window: int,
                  res: dict) -> tuple:
    """``(the Keras model the mode's bundle is exported from, export_llm's extra arguments)``;
    makes (once, into ``models``) the rotated model, the GPTQ copies and the reference
    perplexities (into ``res``) on the way."""
    if mode.startswith("rotated") and "rotated" not in models:
        from benchmarks.rotation import max_rel_logit_diff, rotated_model
        from tfcompress.evaluate import keras_forward

        start = time.perf_counter()
        models["rotated"] = rotated_model(models["float"], online=True)
        res["seconds"]["rotate"] = time.perf_counter() - start
        first = np.asarray(ids[:window], np.int32)[None]
        res["rotation_max_rel_logit_diff"] = max_rel_logit_diff(
            keras_forward(models["float"])(first), keras_forward(models["rotated"])(first))
        print(f"== rotated (online Hadamard): max rel logit diff "
              f"{res['rotation_max_rel_logit_diff']:.1e}", flush=True)
    rotated = mode.startswith("rotated")
    base = models["rotated" if rotated else "float"]
    ref = reference_name(mode, args)
    if mode == "rotated_gptq_int8":
        if mode not in models:
            start = time.perf_counter()
            models[mode] = gptq_model(base, tokenizer, args.calib, "litert_int8", act_order=True)
            res["seconds"][mode] = time.perf_counter() - start
            res["keras_ppl"][ref] = keras_perplexity(models[mode], ids, window)
        return models[mode], {}
    if EXPORT_MODE[mode] == "dynamic_int8" and ref not in res["keras_ppl"]:
        res["keras_ppl"][ref] = keras_perplexity(rtn_int8_model(base), ids, window)
    if EXPORT_MODE[mode] != "int4":
        return base, {}
    key = "rotated_gptq" if rotated else "gptq"
    if key not in models:
        start = time.perf_counter()
        models[key] = (gptq_model(base, tokenizer, args.calib, act_order=True) if rotated
                       else gptq_model(base, tokenizer, args.calib, args.int4_grid))
        res["seconds"][key] = time.perf_counter() - start
        res["keras_ppl"][reference_name("rotated_int4" if rotated else "int4", args)] = \
            keras_perplexity(models[key], ids, window)
    if mode != "rotated_int4_budget":
        return models[key], {}
    res["budget_mb"] = args.budget_mb or res["file_mb"]["llama.cpp Q4_K_M"]
    return models[key], {"budget_mb": res["budget_mb"], "float_model": base,
                         "calibration": calibration_windows(tokenizer, args.calib)}


def carried_perplexity(model, result, float_model, ids: np.ndarray, window: int) -> float:
    """Perplexity of the model a budget bundle carries (`export_llm.reference_logits`):
    ``model``'s GPTQ codes where int4 stayed, ``float_model``'s weights where int8 was
    bought."""
    from tfcompress.export.llm import reference_logits
    from tfcompress.export.llm_graph import decoder_of
    from tfcompress.models import causal_lm_perplexity

    floats = decoder_of(float_model).weights
    forward = reference_logits(model, {name: floats[f"{name}.w"][0]
                                       for name in result.int4["budget"]["int8_from_float"]})
    return causal_lm_perplexity(lambda x: forward(x[0])[None], ids, window)["perplexity"]


def _int4_note(res: dict, mode: str, result, args) -> None:
    """The int4 bundle's per-layer report (``<mode>_layers``) and its note."""
    res["int4_layers" if mode == "int4" else f"{mode}_layers"] = result.int4
    grid = args.int4_grid if mode == "int4" else "litert (act-order)"
    model = "rotated (online Hadamard) model" if mode in ROTATED else "model"
    budget = result.int4.get("budget")
    bought = (f"; within budget_mb={budget['budget_mb']:.3f}: {len(budget['int8'])} maps int8, "
              "rounded from the rotated float weights" if budget else "")
    res["notes"] = [n for n in res["notes"] if not n.startswith(f"{mode}:")]
    res["notes"].append(
        f"{mode}: GPTQ of the {model} on the {grid} grid; {len(result.int4['copied'])} "
        f"quantized matmuls keep their codes exactly, {len(result.int4['rerounded'])} "
        f"re-rounded onto LiteRT's blockwise int4{bought}; embedding "
        f"{result.int4['embedding']}; the head int8 per channel; activations quantized on the "
        "fly by the runtime")


def texts(tokenizer, quick: bool) -> tuple[np.ndarray, int, np.ndarray]:
    """``(evaluation ids, window, prompt ids)`` from austen/test.txt (`eval_sizes`, `PROMPT`)."""
    from tfcompress.data import bundled_corpus

    text = bundled_corpus("austen")["test"]
    eval_tokens, window = eval_sizes(quick)
    return (tokenizer.encode(text[:20_000])[:eval_tokens], window,
            tokenizer.encode(text[30_000:40_000])[:PROMPT])


def empty_results() -> dict:
    return {"file_mb": {}, "ppl": {}, "keras_ppl": {}, "ppl_ratio_vs_keras": {},
            "ppl_ratio_vs_float": {}, "runtime_rss_mb": {}, "timing": {}, "notes": [],
            "seconds": {}}


def export_row(mode: str, args) -> None:
    """Run in a fresh process, so that no export's models and traced graphs outlive it (four
    exports in one process reached 17.8 GB): the ``mode`` bundle under ``--out``, its source
    model and their perplexities, saved as ``<out>/rows/<mode>.json`` for `merge_row`."""
    from tfcompress.evaluate import keras_forward
    from tfcompress.export import export_llm
    from tfcompress.models import generate
    from tfcompress.models.loaders import gguf_tokenizer, load_gguf
    from tfcompress.quantize import cache_decoded

    out, gguf = Path(args.out), gguf_path(args)
    tokenizer = gguf_tokenizer(gguf)
    models, res = {"float": load_gguf(gguf)}, empty_results()
    ids, window, prompt = texts(tokenizer, args.quick)
    source, kwargs = bundle_source(mode, models, args, tokenizer, ids, window, res)
    start = time.perf_counter()
    # export_llm's own check (on text) as users get it; perplexity is measured below too
    result = export_llm(source, out / mode, prefill_lengths=PREFILL, cache_length=CACHE,
                        cache_buckets=BUCKETS, mode=EXPORT_MODE[mode], tokenizer=gguf,
                        **kwargs)
    res["seconds"][f"export_{mode}"] = time.perf_counter() - start
    if result.int4 is not None:
        _int4_note(res, mode, result, args)
    if mode == "rotated_int4_budget":
        res["keras_ppl"][REFERENCE[mode]] = carried_perplexity(
            source, result, models["rotated"], ids, window)
    res["file_mb"][mode] = result.bytes / 1e6
    start = time.perf_counter()
    res["ppl"][mode] = exported_perplexity(out / mode, ids, window)
    res["seconds"][f"ppl_{mode}"] = time.perf_counter() - start
    print(f"== {mode}: {res['file_mb'][mode]:.1f} MB, ppl {res['ppl'][mode]:.3f}", flush=True)
    if mode == "dynamic_int8":
        res["litertlm"] = litertlm_engine(out / mode, tokenizer.decode(prompt.tolist()))
        print(f"== LiteRT-LM engine: {res['litertlm']}", flush=True)
        if not args.skip_window:
            res["window"] = window_path(models["float"], out)
    if mode == "int4":  # the int4 bundle's greedy ids are compared with its own Keras model's
        greedy = QUICK_GREEDY if args.quick else GREEDY
        res["keras_greedy_int4"] = generate(keras_forward(cache_decoded(source)), prompt,
                                            greedy)[:greedy]
        cache_decoded(source, enabled=False)  # timed below decoding its codes
        res["keras_generate_30_s"] = {
            "float": keras_generation_s(models["float"], prompt),
            "gptq_decoding_codes": keras_generation_s(source, prompt),
            "gptq_cache_decoded": keras_generation_s(cache_decoded(source), prompt)}
    write_atomic(out / "rows" / f"{mode}.json", json.dumps(res))


def merge_row(res: dict, row: dict) -> None:
    """``row`` (`export_row`'s results of one mode) into ``res``: its figures added to the
    tables ``res`` has, its notes replacing the ones they rewrite, every other key set.

    >>> res = {"ppl": {"int4": 50.0}, "notes": ["int4: old"], "budget_mb": 1.0}
    >>> merge_row(res, {"ppl": {"int8": 45.0}, "notes": ["int4: new"], "budget_mb": 2.0})
    >>> res
    {'ppl': {'int4': 50.0, 'int8': 45.0}, 'notes': ['int4: new'], 'budget_mb': 2.0}
    """
    for key, value in row.items():
        if key == "notes":
            heads = tuple(n.split(":")[0] + ":" for n in value)
            res["notes"] = [n for n in res["notes"] if not n.startswith(heads)] + value
        elif isinstance(value, dict) and isinstance(res.get(key), dict):
            res[key].update(value)
        else:
            res[key] = value


def exported_rows(args, res: dict) -> None:
    """Every mode of ``--modes`` exported and scored by `export_row` in a process of its own,
    merged into ``res``."""
    budget = args.budget_mb or res["file_mb"].get("llama.cpp Q4_K_M")
    common = ["--out", args.out, "--calib", str(args.calib), "--int4-grid", args.int4_grid,
              *(["--gguf", args.gguf] if args.gguf else []),
              *(["--budget-mb", str(budget)] if budget else []),
              *(["--quick"] if args.quick else []),
              *(["--skip-window"] if args.skip_window else [])]
    for mode in args.modes:
        done = subprocess.run([sys.executable, "-m", "benchmarks.generate", *common,
                               "--export-row", mode], cwd=ROOT, check=False)
        if done.returncode:
            raise RuntimeError(f"exporting {mode} failed (exit {done.returncode}); its output "
                               "is above")
        merge_row(res, json.loads((Path(args.out) / "rows" / f"{mode}.json").read_text()))
        ref = res["keras_ppl"][reference_name(mode, args)]
        res["ppl_ratio_vs_keras"][mode] = res["ppl"][mode] / ref
        print(f"== {mode}: ppl {res['ppl'][mode]:.3f}, its Keras model's {ref:.3f}", flush=True)
        _write(res, args)


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
    parser.add_argument("--budget-mb", type=float, help="rotated_int4_budget's file size "
                        "(default: llama.cpp's Q4_K_M made in the run)")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help=f"interleaved timing rounds, medians reported (default {REPEATS})")
    parser.add_argument("--merge", help="results file (benchmarks/results/) of an earlier run on "
                        "this commit (other modes) to extend")
    parser.add_argument("--name", default="generate", help="results file name")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--export-row", choices=MODES, help=argparse.SUPPRESS)
    args = parse_args(parser, argv)
    args.modes = args.modes or (["float16"] if args.quick else list(MODES))
    args.skip_window = args.skip_window or args.quick
    if args.repeats < 1:
        raise TfcompressError(f"--repeats must be 1 or more timing rounds, got {args.repeats}")
    if "rotated_int4_budget" in args.modes and args.quick and not args.budget_mb:
        raise TfcompressError("--modes rotated_int4_budget under --quick needs --budget-mb (no "
                              "llama.cpp Q4_K_M is made to take its size from)")
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    if args.export_row:
        export_row(args.export_row, args)
        return
    if not args.quick:  # the tiny random GGUF has no llama.cpp form worth timing
        require_llama_cpp()  # before any work
    if args.quick:
        args.out = str(scratch_dir("generate-quick-"))
        args.repeats = 1

    from tfcompress.evaluate import keras_forward
    from tfcompress.models import generate
    from tfcompress.models.loaders import gguf_tokenizer, load_gguf

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    gguf = gguf_path(args)
    tokenizer = gguf_tokenizer(gguf)
    model = load_gguf(gguf)
    eval_ids, window, prompt = texts(tokenizer, args.quick)
    prompt_file = out / "prompt.npy"
    np.save(prompt_file, prompt)
    res = empty_results()
    if args.merge:
        res = merge_source(args.merge, args)
        res["notes"] = [n for n in res["notes"] if n.startswith(NOTES)]  # only what code wrote
    greedy = QUICK_GREEDY if args.quick else GREEDY
    keras_greedy = generate(keras_forward(model), prompt, greedy)
    res["keras_greedy"] = keras_greedy[:greedy]
    if "float" not in res["keras_ppl"]:
        res["keras_ppl"]["float"] = keras_perplexity(model, eval_ids, window)
    targets = {}
    if not args.quick:  # first: the budget row's default size is their Q4_K_M's
        targets |= llamacpp_files(gguf, scratch_dir("generate-llamacpp-"), eval_ids, window,
                                  res)
    exported_rows(args, res)
    targets |= {mode: out / mode for mode in args.modes}

    start = time.perf_counter()
    for name, by_threads in interleaved_timings(targets, prompt_file, greedy,
                                                args.repeats).items():
        res["timing"][name] = {t: medians(runs) for t, runs in by_threads.items()}
        first = by_threads[str(THREADS)][0]  # its ids and memory (they do not vary)
        res[f"greedy_{name}"], res["runtime_rss_mb"][name] = first["greedy"], first["runtime_mb"]
        if first.get("cache_read") is not None:
            res.setdefault("decode_cache_read", {})[name] = first["cache_read"]
    res["seconds"]["timing"] = time.perf_counter() - start
    cache_lengths(model, gguf, prompt, out, args, res)

    res["notes"] = [n for n in res["notes"] if not n.startswith("greedy ")]  # a merged run's
    for name in res["timing"]:
        ours = res.get(f"greedy_{name}")
        theirs = res.get("keras_greedy_int4") if name == "int4" else keras_greedy
        if ours is None or theirs is None:
            continue
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False))
                     if a != b), greedy)
        res[f"greedy_same_prefix_{name}"] = same
        res["notes"].append(f"greedy {name} vs "
                            f"{'its Keras GPTQ model' if name == 'int4' else 'Keras float32'} "
                            f"(prompt of {PROMPT}): first {same} of {greedy} tokens identical")
    float16 = res.get("greedy_float16")
    res["greedy_match_keras"] = None if float16 is None else float16 == keras_greedy[:greedy]
    res["seconds"]["total"] = time.perf_counter() - started
    _write(res, args)


def cache_lengths(model, gguf: Path, prompt: np.ndarray, out: Path, args, res: dict) -> None:
    """``decode_4096_vs_256`` (and its 1-thread, prefill and per-bundle figures under
    ``cache_lengths``) into ``res``, measured as `benchmarks.decode_cache` does (its bundles
    `LENGTHS`, dynamic_int8; --quick: a tiny float32 pair under the same names)."""
    from benchmarks import decode_cache

    start = time.perf_counter()
    if args.quick:  # caches of 32 and 128 (its bucket 32): 2 + 4 signatures of a toy
        q = decode_cache.QUICK
        bundles = dict(zip(LENGTHS, ((32, None, "float32"), (128, (32,), "float32")),
                           strict=True))
        size, mode, new, repeats = q["prompt"], q["mode"], q["new"], q["repeats"]
    else:
        bundles = {name: decode_cache.BUNDLES[name] for name in LENGTHS}
        size, mode, new, repeats = PROMPT, "dynamic_int8", decode_cache.NEW, args.repeats
    rows = decode_cache.export_bundles(model, gguf, bundles, size, mode, out / "cache_lengths")
    timed = decode_cache.timed_lengths(bundles, out / "cache_lengths", prompt[:size], new,
                                       repeats)
    res["cache_lengths"] = {"rows": rows, "mode": mode, **timed}
    res.update({k: v for k, v in timed.items() if k.startswith(("decode_4096", "prefill_4096"))})
    res["seconds"]["cache_lengths"] = time.perf_counter() - start


def best_rows(res: dict) -> dict[str, str]:
    """For each precision of `PRECISION`, our measured row the done-when keys use: the lowest
    perplexity among those no larger than llama.cpp's file of that precision (among all
    measured rows where none is, or where llama.cpp made no such file).

    >>> best_rows({"file_mb": {"int4": 90.0, "rotated_int4": 91.0, "rotated_int4_budget": 106.0,
    ...                        "llama.cpp Q4_K_M": 105.5},
    ...            "ppl": {"int4": 60.0, "rotated_int4": 52.0, "rotated_int4_budget": 47.0}})
    {'int4': 'rotated_int4'}
    """
    rows = {}
    for key, names in PRECISION.items():
        measured = [n for n in names if n in res["ppl"] and n in res["file_mb"]]
        peer = res["file_mb"].get(f"llama.cpp {PEERS[key][0]}")
        fits = [n for n in measured if peer is None or res["file_mb"][n] <= peer]
        if measured:
            rows[key] = min(fits or measured, key=res["ppl"].get)
    return rows


def quality_size_points(res: dict) -> dict[str, list[tuple[str, float, float]]]:
    """``{"ours": [(label, file MB, ppl ratio to float)], "llama.cpp": [...]}``: every
    runtime with both figures.

    >>> quality_size_points({"file_mb": {"int4": 90.0, "llama.cpp Q4_0": 92.0},
    ...                      "ppl_ratio_vs_float": {"int4": 1.1, "llama.cpp Q4_0": 1.2}})
    {'ours': [('int4', 90.0, 1.1)], 'llama.cpp': [('Q4_0', 92.0, 1.2)]}
    """
    points: dict = {"ours": [], "llama.cpp": []}
    for name, mb in res["file_mb"].items():
        if name in res["ppl_ratio_vs_float"]:
            runtime, _, label = name.rpartition(" ")
            points[runtime or "ours"].append((label, mb, res["ppl_ratio_vs_float"][name]))
    return points


def plot_quality_size(res: dict, path: Path) -> None:
    """Perplexity ratio to the float model against file MB, a marker per runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (runtime, points), marker in zip(quality_size_points(res).items(), "os", strict=True):
        if points:
            labels, mb, ratio = zip(*points, strict=True)
            ax.scatter(mb, ratio, marker=marker, s=50, label=runtime)
            for label, x, y in points:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("file MB")
    ax.set_ylabel("perplexity / float Keras model's (same tokens)")
    ax.set_title("SmolLM2-135M: quality against size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=110, format="png")
    plt.close(fig)
    write_atomic(path, png.getvalue())  # never a half-written plot


def _write(res: dict, args) -> None:
    res["ppl_ratio_vs_float"] = {name: ppl / res["keras_ppl"]["float"]
                                 for name, ppl in res["ppl"].items()}
    res["peer_rows"] = best_rows(res)
    res.update(peer_ratios(res, res["keras_ppl"]["float"], res["peer_rows"]))
    window = res.get("window", {}).get("decode_tps")
    ours = res["timing"].get("dynamic_int8", {}).get(str(THREADS), {}).get("decode_tps")
    res["int8_decode_vs_window"] = None if None in (ours, window) else ours / window
    size = res["file_mb"]
    res["int4_size_vs_int8"] = (size["int4"] / size["dynamic_int8"]
                                if {"int4", "dynamic_int8"} <= set(size) else None)
    res["peak_rss_vs_file"] = max((res["runtime_rss_mb"][m] / size[m]
                                   for m in res["runtime_rss_mb"]), default=None)
    res["litertlm_greedy_match"] = res.get("litertlm", {}).get("greedy_match")
    res.setdefault("greedy_match_keras", None)
    loads = [x for by in res["timing"].values() for m in by.values() for x in m["load_avg"]]
    res["timing_load_avg"] = [min(loads), max(loads)] if loads else None
    notes = [n for n in res["notes"] if not n.startswith(NOTES[-2:])]
    if "error" in res.get("litertlm", {}):
        notes.append(f"LiteRT-LM: {res['litertlm']['error']}")
    missing = [m for m in MODES if m not in size]
    if missing or "window" not in res:
        notes.append(f"not measured: modes {missing}{'' if 'window' in res else ', window path'}")
    res["notes"] = notes
    plot = results_dir(args.quick) / f"{args.name}_size.png"
    results_dir(args.quick).mkdir(parents=True, exist_ok=True)
    plot_quality_size(res, plot)
    write_results(args.name, generate_table(res), res, args)


if __name__ == "__main__":
    main()
