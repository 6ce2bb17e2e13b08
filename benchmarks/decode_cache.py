"""Decode speed against the exported cache length: SmolLM2-135M dynamic_int8 bundles with a
256- and a 4,096-token cache, the long one with and without cache-length buckets
(`export_llm(..., cache_buckets=...)`) and with a float32 or float16 cache
(``kv_cache_dtype``), measured 128 tokens in.

Every bundle is exported with ``prefill_lengths=(128,)`` and verified on text (export_llm's
defaults). Each repetition measures every bundle on 1 and 2 threads in turn (interleaved, one
runner per bundle and thread count, warmed up once): 127 prompt tokens prefilled, then
`NEW` greedy decode steps from position 128 (`measure_speed`); the table gives the medians.
``decode_4096_vs_256`` is the bucketed 4,096 bundle's median decode tokens/s over the 256
one's on 2 threads (issue #25 asks >= 0.8; ``_1t``: 1 thread; ``unbucketed_`` / ``f16_``:
the other long bundles). The machine is shared: the load is recorded.

    python -m benchmarks.decode_cache            # writes results/decode_cache.json
    python -m benchmarks.decode_cache --buckets 256 --bundles cache_256 cache_4096 \
        cache_4096_buckets   # the bucket 128 tokens in use only: 4 signatures, not 10
    python -m benchmarks.decode_cache --quick    # a tiny random Llama, caches 32 and 128
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import numpy as np

from benchmarks._common import bench_parser, parse_args, scratch_dir, write_results
from benchmarks.llm import gguf_path

PROMPT, NEW, REPEATS, THREADS = 128, 64, 5, (1, 2)
# name: (cache_length, cache_buckets, kv_cache_dtype); the first (short cache) is the peer
BUNDLES = {"cache_256": (256, None, "float32"), "cache_4096": (4096, None, "float32"),
           "cache_4096_buckets": (4096, "auto", "float32"),
           "cache_4096_buckets_f16": (4096, "auto", "float16")}
# --quick: float32 (dynamic_int8 of random weights misses export_llm's verification)
QUICK = dict(prompt=16, new=8, repeats=2, mode="float32", bundles={
    "cache_32": (32, None, "float32"), "cache_128": (128, None, "float32"),
    "cache_128_buckets": (128, (32, 64), "float32"),
    "cache_128_buckets_f16": (128, (32, 64), "float16")})


def export_bundles(model, gguf: Path, bundles: dict, prompt: int, mode: str,
                   out: Path) -> dict:
    """Export each bundle (verified on text); its size, signatures, time."""
    from tfcompress.export import export_llm

    rows = {}
    for name, (cache, buckets, kv_dtype) in bundles.items():
        print(f"decode_cache: exporting {name}", flush=True)
        start = time.perf_counter()
        result = export_llm(model, out / name, prefill_lengths=(prompt,), cache_length=cache,
                            cache_buckets=buckets, kv_cache_dtype=kv_dtype, mode=mode,
                            tokenizer=gguf)
        rows[name] = {"cache_length": cache, "kv_cache_dtype": kv_dtype,
                      "file_mb": result.bytes / 1e6,
                      "signatures": len(result.signatures),
                      "export_s": time.perf_counter() - start,
                      "agreement": result.agreement, "perplexity": result.perplexity,
                      "keras_perplexity": result.keras_perplexity}
        gc.collect()
    return rows


def measure(bundles: list[str], out: Path, prompt: np.ndarray, new: int,
            repeats: int) -> dict:
    """Median prefill/decode tokens/s of every bundle and thread count, interleaved."""
    from tfcompress.export.llm_runner import LLMRunner, measure_speed

    runners = {(name, t): LLMRunner(out / name, num_threads=t) for name in bundles
               for t in THREADS}
    for runner in runners.values():  # packs XNNPACK's weights
        measure_speed(runner, prompt, new_tokens=2, rounds=1)
    samples: dict = {key: [] for key in runners}
    for _ in range(repeats):
        for key, runner in runners.items():
            samples[key].append(measure_speed(runner, prompt, new_tokens=new, rounds=1))
    greedy = {name: list(runners[name, THREADS[-1]].generate_ids(prompt, new))
              for name in bundles}
    first = greedy[bundles[0]]
    return {
        "decode_tps": {f"{n}_{t}t": float(np.median([s["decode_tokens_per_s"] for s in v]))
                       for (n, t), v in samples.items()},
        "prefill_tps": {f"{n}_{t}t": float(np.median([s["prefill_tokens_per_s"] for s in v]))
                        for (n, t), v in samples.items()},
        "decode_tps_samples": {f"{n}_{t}t": [round(s["decode_tokens_per_s"], 1) for s in v]
                               for (n, t), v in samples.items()},
        "greedy_equal_to_" + bundles[0]: {n: ids == first for n, ids in greedy.items()},
    }


def role(spec: tuple) -> str:
    """The key infix of a long bundle ``(cache_length, cache_buckets, kv_cache_dtype)`` by
    what it tests: ``""`` (bucketed, float32: the issue's key), ``"unbucketed_"``, ``"f16_"``.

    >>> role((4096, "auto", "float32")), role((4096, None, "float32"))
    ('', 'unbucketed_')
    >>> role((128, (32, 64), "float16"))
    'f16_'
    """
    _, buckets, kv_dtype = spec
    return "unbucketed_" if not buckets else "f16_" if kv_dtype == "float16" else ""


def length_ratios(timed: dict, bundles: dict) -> dict:
    """``decode_4096_<role>vs_256`` (2 threads; ``_1t``: 1 thread) and ``prefill_...``: each
    later bundle's median tokens/s over the first one's, from `measure`'s ``timed``.

    >>> length_ratios({"decode_tps": {"s_1t": 50.0, "s_2t": 40.0, "l_1t": 45.0, "l_2t": 40.0},
    ...                "prefill_tps": {"s_1t": 200.0, "s_2t": 300.0, "l_1t": 100.0,
    ...                                "l_2t": 150.0}},
    ...               {"s": (256, None, "float32"), "l": (4096, "auto", "float32")})
    {'decode_4096_vs_256_1t': 0.9, 'prefill_4096_vs_256_1t': 0.5, 'decode_4096_vs_256': 1.0, \
'prefill_4096_vs_256': 0.5}
    """
    short, *longs = bundles
    out = {}
    for t in THREADS:
        suffix = "" if t == THREADS[-1] else f"_{t}t"
        for name in longs:
            for kind in ("decode", "prefill"):
                tps = timed[f"{kind}_tps"]
                out[f"{kind}_4096_{role(bundles[name])}vs_256{suffix}"] = (
                    tps[f"{name}_{t}t"] / tps[f"{short}_{t}t"])
    return out


def timed_lengths(bundles: dict, out: Path, prompt: np.ndarray, new: int,
                  repeats: int) -> dict:
    """`measure` of the exported ``bundles`` in ``out`` (the first is the peer) with their
    `length_ratios`: what ``decode_cache`` and ``generate`` report."""
    before = os.getloadavg()[0]
    timed = measure(list(bundles), out, prompt, new, repeats)
    return {**timed, **length_ratios(timed, bundles), "prompt_tokens": int(prompt.size),
            "decode_steps": new, "repeats": repeats, "threads": list(THREADS),
            "load_avg": [before, os.getloadavg()[0]]}  # 1-minute, before and after timing


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("decode_cache", __doc__)
    parser.add_argument("--gguf", help="a Llama GGUF instead of the installed SmolLM2")
    parser.add_argument("--out", default="runs/decode_cache")
    parser.add_argument("--buckets", nargs="+", type=int,
                        help="the long bundles' cache buckets (default: export_llm's 'auto')")
    parser.add_argument("--bundles", nargs="+", choices=list(BUNDLES),
                        help="default: all; the first is the peer")
    args = parse_args(parser, argv)
    bundles = {name: (cache, (args.buckets or buckets) if buckets else None, kv)
               for name, (cache, buckets, kv) in BUNDLES.items()
               if name in (args.bundles or BUNDLES)}
    size = QUICK if args.quick else dict(prompt=PROMPT, new=NEW, repeats=REPEATS,
                                         mode="dynamic_int8", bundles=bundles)
    out = scratch_dir("decode-cache-") if args.quick else Path(args.out)
    args.out = str(out)
    out.mkdir(parents=True, exist_ok=True)

    from tfcompress.data import bundled_corpus
    from tfcompress.models.loaders import gguf_tokenizer, load_gguf

    gguf = gguf_path(args)
    model = load_gguf(gguf)
    text = bundled_corpus("austen")["test"]
    prompt = np.asarray(gguf_tokenizer(gguf).encode(text[30_000:40_000])[:size["prompt"]])
    rows = export_bundles(model, gguf, size["bundles"], size["prompt"], size["mode"], out)
    del model  # the runners' memory, not the model's, while timing
    gc.collect()
    res = {"rows": rows, **timed_lengths(size["bundles"], out, prompt, size["new"],
                                         size["repeats"]),
           "mode": size["mode"], "cpu_count": os.cpu_count()}
    short = next(iter(size["bundles"]))
    lines = ["| bundle | cache | KV | signatures | file MB | export s | ppl (Keras) | decode tok/s "
             "1t / 2t | prefill tok/s 1t / 2t |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        tps = [res["decode_tps"][f"{name}_{t}t"] for t in THREADS]
        pre = [res["prefill_tps"][f"{name}_{t}t"] for t in THREADS]
        ppl = "-" if row["perplexity"] is None else (f"{row['perplexity']:.2f} "
                                                     f"({row['keras_perplexity']:.2f})")
        lines.append(f"| {name} | {row['cache_length']} | {row['kv_cache_dtype']} | "
                     f"{row['signatures']} | "
                     f"{row['file_mb']:.1f} | {row['export_s']:.0f} | {ppl} | "
                     f"{tps[0]:.1f} / {tps[1]:.1f} | {pre[0]:.0f} / {pre[1]:.0f} |")
    ratios = "; ".join(f"{key} {value:.2f}" for key, value in res.items()
                       if key.startswith(("decode_4096", "prefill_4096")))
    lines.append(f"\n{ratios}. Medians of {size['repeats']} interleaved repetitions, "
                 f"{size['new']} decode steps after {prompt.size} prompt tokens; greedy ids "
                 f"equal to {short}'s: {res['greedy_equal_to_' + short]}")
    write_results("decode_cache", "\n".join(lines), res, args)


if __name__ == "__main__":
    main()
