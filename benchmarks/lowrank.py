"""Low-rank factorization of the demo teacher: perplexity vs parameters, fine-tuning, TFLite.

Factorizes the teacher's attention projections and MLP kernels (``include=_attn|_mlp_``) at
80 %, 60 % and 50 % of those kernels' weights with plain SVD, ASVD, SVD-LLM ("aware") and
SVD-LLM with sensitivity-based rank allocation; fine-tunes the 60 % models with
``model.fit`` (and, as a control, the dense teacher for the same steps); exports the dense
and the fine-tuned aware 60 % model to float32 TFLite and times them interleaved.

Run: ``python -m benchmarks.lowrank [--steps N] [--quick]`` (the teacher is cached in
``$TFCOMPRESS_CACHE``, default ``~/.cache/tfcompress``)
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks._common import (
    BENCH_SETTINGS,
    bench_parser,
    demo_context,
    parse_args,
    write_results,
)
from tfcompress.core.layers import copy_model
from tfcompress.evaluate import interleaved_latency, keras_forward, lm_quality
from tfcompress.export import TFLiteRunner, export_tflite
from tfcompress.lowrank import FactorizeConfig, factorization_table, factorize
from tfcompress.models.training import train_lm

RATIOS = (0.8, 0.6, 0.5)
METHODS = {  # row name -> config settings
    "plain": {"method": "svd"},
    "asvd": {"method": "asvd"},
    "aware": {"method": "svd-llm"},
    "sensitivity": {"method": "svd-llm", "allocation": "sensitivity"},
}
INCLUDE = r"_attn|_mlp_"


def perplexity(model, batches) -> float:
    return lm_quality(keras_forward(model), batches)["perplexity"]


def tflite_latency(paths: dict[str, Path], rounds: int, repeats: int) -> dict:
    """Median ms per batch-1 invoke of each file, timed interleaved."""
    runners = {k: TFLiteRunner(p) for k, p in paths.items()}
    x = next(iter(runners.values())).sample_input(1)
    times = interleaved_latency({k: (lambda r=r: r.predict(x)) for k, r in runners.items()},
                                rounds=rounds, repeats=repeats, warmup=1)
    return {k: t["median_ms"] for k, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("lowrank", __doc__)
    parser.add_argument("--steps", type=int, default=None, help="fine-tune steps (default: "
                        "the demo's finetune_steps)")
    parser.add_argument("--eval-windows", type=int, default=128)
    parser.add_argument("--finetune", nargs="*", default=["aware", "sensitivity", "plain"])
    args = parse_args(parser, argv)
    # --eval-windows applies to the recorded settings; --quick keeps its own tiny sizes
    settings = None if args.quick else replace(BENCH_SETTINGS, eval_windows=args.eval_windows)
    ctx = demo_context(args, settings)
    steps = args.steps or ctx.settings.finetune_steps
    batches, calib = ctx.eval_data(), ctx.calibration()
    teacher = ctx.teacher
    dense_ppl = perplexity(teacher, batches)
    print(f"dense teacher perplexity {dense_ppl:.3f} on {len(batches)} test batches")

    before, param_ratio, models, timings = {}, {}, {}, {}
    for name, settings in METHODS.items():
        before[name] = {}
        for ratio in RATIOS:
            start = time.perf_counter()
            config = FactorizeConfig(target_ratio=ratio, include=INCLUDE, **settings)
            model = factorize(teacher, config, calibration=calib, verbose=False)
            timings[f"{name}_{ratio}"] = time.perf_counter() - start
            plans = model.factorization
            param_ratio[str(ratio)] = (sum(p.params_after for p in plans)
                                       / sum(p.params_before for p in plans))
            before[name][str(ratio)] = perplexity(model, batches) / dense_ppl
            print(f"{name:12s} {ratio:.0%}: ppl ratio {before[name][str(ratio)]:.3f} "
                  f"({timings[f'{name}_{ratio}']:.0f} s)", flush=True)
            if ratio == 0.6:
                models[name] = model
                if name == "aware":
                    print(factorization_table(plans))

    after, step_s = {}, {}
    control = copy_model(teacher)
    for name, model in [("dense", control), *[(n, models[n]) for n in args.finetune]]:
        start = time.perf_counter()
        train_lm(model, ctx.train_data(), steps, learning_rate=3e-4, verbose=2)
        step_s[name] = (time.perf_counter() - start) / steps
        after[name] = perplexity(model, batches) / dense_ppl
        print(f"fine-tuned {name}: ppl ratio {after[name]:.3f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        paths = {"dense": Path(tmp) / "dense.tflite", "aware_60": Path(tmp) / "aware.tflite"}
        sample = calib[:2].astype(np.int32)
        sizes = {k: export_tflite(m, paths[k], seq_len=ctx.settings.seq_len, sample=sample).bytes
                 for k, m in (("dense", teacher), ("aware_60", models["aware"]))}
        s = ctx.settings
        latency = tflite_latency(paths, rounds=s.latency_rounds if args.quick else 3,
                                 repeats=s.latency_repeats)

    lowrank_params = models["aware"].count_params()
    rows = ["| method | 80 % | 60 % | 50 % | 60 % + fine-tune |", "|---|---|---|---|---|"]
    for name in METHODS:
        ft = f"{after[name]:.3f}" if name in after else "-"
        rows.append(f"| {name} | " + " | ".join(f"{before[name][str(r)]:.3f}" for r in RATIOS)
                    + f" | {ft} |")
    rows.append(f"| dense teacher (control) | 1.000 | 1.000 | 1.000 | {after['dense']:.3f} |")
    table = "\n".join([
        "Perplexity ratio to the dense teacher (lower is better), by share of the factorized "
        "kernels' weights kept.",
        "",
        *rows,
        "",
        "Actual kernel-weight ratio per target: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in param_ratio.items())
        + f". Whole model at 60 %: {lowrank_params:,} / {teacher.count_params():,} params "
        f"({lowrank_params / teacher.count_params():.1%}).",
        "",
        "| TFLite float32 | bytes | batch-1 latency (ms, median, interleaved) |",
        "|---|---|---|",
        f"| dense | {sizes['dense']:,} | {latency['dense']:.2f} |",
        f"| aware 60 % | {sizes['aware_60']:,} | {latency['aware_60']:.2f} |",
        "",
        f"Dense perplexity {dense_ppl:.3f} on {ctx.settings.eval_windows} test windows of "
        f"{ctx.settings.seq_len} tokens; fine-tune: {steps} steps, AdamW 3e-4 cosine, "
        f"batch {ctx.settings.batch_size}; calibration {len(calib)} training windows.",
    ])
    data = {
        "plain": before["plain"], "aware": before["aware"], "asvd": before["asvd"],
        "sensitivity": before["sensitivity"], "param_ratio": param_ratio,
        "finetuned": after, "finetuned_60": after.get("aware"),
        "finetuned_60_dense_control": after["dense"],
        "dense_perplexity": dense_ppl, "finetune_steps": steps,
        "tflite_bytes": sizes, "tflite_size_ratio_60": sizes["aware_60"] / sizes["dense"],
        "tflite_latency_ms": latency,
        "tflite_latency_ratio_60": latency["aware_60"] / latency["dense"],
        "seconds": {"factorize": timings, "finetune_per_step": step_s},
        "targets": {
            "aware_beats_plain_every_ratio": all(
                before["aware"][str(r)] < before["plain"][str(r)] for r in RATIOS),
            "finetuned_60_within_1.10": (after.get("aware") or np.inf) <= 1.10,
        },
    }
    write_results("lowrank", table, data, args)


if __name__ == "__main__":
    main()
