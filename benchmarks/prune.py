"""Pruning on the demo teacher: one-shot criteria at 50 % and 2:4, fine-tune, fit overhead,
gzip size and structured-pruning TFLite latency.

Run: ``python -m benchmarks.prune [--quick]`` (the teacher is cached in ``$TFCOMPRESS_CACHE``,
default ``~/.cache/tfcompress``)
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks._common import bench_parser, demo_context, parse_args, write_results
from tfcompress.core.layers import copy_model
from tfcompress.evaluate import (
    file_sizes,
    interleaved_latency,
    keras_file_sizes,
    keras_forward,
    lm_quality,
)
from tfcompress.export import TFLiteRunner, export_tflite
from tfcompress.models.training import compile_lm, train_lm
from tfcompress.prune import PruneConfig, UpdatePruning, prune, strip_pruning
from tfcompress.recipes.stages import finetune

# the demo's prune stage (tfcompress/recipes/examples/demo.yaml)
DEMO_CONFIG = PruneConfig(method="sparsegpt", sparsity=0.5, include="block")

FIT_STEPS, FIT_ROUNDS = 8, 3


def perplexity(model, data) -> float:
    return lm_quality(keras_forward(model), data)["perplexity"]


class BatchClock:
    """Seconds between consecutive batch ends, callbacks (pruning included) counted."""

    def __init__(self):
        import keras

        self.times: list[float] = []
        clock = self

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                clock.times.append(time.perf_counter())

        self.callback = _Callback()

    def steps(self) -> list[float]:
        return list(np.diff(self.times))


def fit_overhead(teacher, ctx, rounds: int = FIT_ROUNDS, fit_steps: int = FIT_STEPS) -> float:
    """Median step time of pruning-aware fit over plain fit, interleaved in rounds."""
    plain = copy_model(teacher)
    pruned = prune(teacher, DEMO_CONFIG, calibration=ctx.calibration(), verbose=0)
    runs = {"plain": (plain, []), "pruned": (pruned, [UpdatePruning()])}
    steps: dict[str, list] = {"plain": [], "pruned": []}
    for model, _ in runs.values():
        compile_lm(model, 1e-4)
    data = ctx.train_data()
    for _ in range(rounds):
        for name, (model, callbacks) in runs.items():
            clock = BatchClock()
            model.fit(data, steps_per_epoch=fit_steps, epochs=1, verbose=0,
                      callbacks=[*callbacks, clock.callback])
            steps[name] += clock.steps()[1:]  # the first interval includes fit's set-up
    return float(np.median(steps["pruned"]) / np.median(steps["plain"]))


def tflite_latency_ratio(dense, small, settings, tmp: Path) -> tuple[float, dict]:
    """Batch-1 TFLite latency of ``small`` over ``dense``, measured alternately."""
    runners = {}
    sizes = {}
    for name, model in (("dense", dense), ("small", small)):
        path = tmp / f"{name}.tflite"
        export_tflite(model, path, mode="float32", seq_len=settings.seq_len)
        runners[name] = TFLiteRunner(path)
        sizes[name] = file_sizes(path)
    x = runners["dense"].sample_input(1)
    times = interleaved_latency({k: (lambda r=r: r.predict(x)) for k, r in runners.items()},
                                rounds=settings.latency_rounds,
                                repeats=settings.latency_repeats)
    dense_ms, small_ms = times["dense"]["median_ms"], times["small"]["median_ms"]
    return float(small_ms / dense_ms), {"dense_ms": float(dense_ms), "small_ms": float(small_ms),
                                        "sizes": sizes}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(bench_parser("prune", __doc__), argv)
    start = time.perf_counter()
    ctx = demo_context(args)
    s = ctx.settings
    teacher, data, calib = ctx.teacher, ctx.eval_data(), ctx.calibration()
    dense_ppl = perplexity(teacher, data)
    results: dict = {"dense_perplexity": dense_ppl}
    rows = []
    models = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        for pattern, tag in (("unstructured", "50"), ("2:4", "24")):
            cfg = replace(DEMO_CONFIG, method=method, pattern=pattern)
            t0 = time.perf_counter()
            model = prune(teacher, cfg, calibration=calib, verbose=0)
            seconds = time.perf_counter() - t0
            ratio = perplexity(model, data) / dense_ppl
            results[f"{method}_{tag}"] = ratio
            models[f"{method}_{tag}"] = model
            rows.append((f"{method} {'50 %' if tag == '50' else '2:4'} one-shot", ratio,
                         f"{seconds:.1f} s"))
    best = min(("wanda_50", "sparsegpt_50"), key=results.get)
    tuned = finetune(models[best], ctx.train_data(), s.finetune_steps, verbose=0)
    results["finetuned_50"] = perplexity(tuned, data) / dense_ppl
    results["finetuned_from"] = best
    rows.append((f"{best.replace('_50', '')} 50 % + {s.finetune_steps}-step masked fine-tune",
                 results["finetuned_50"], ""))
    # the teacher is not trained to convergence: the same fine-tune on the dense model shows
    # how much of the gain is extra training rather than recovery from pruning
    dense_tuned = copy_model(teacher)
    train_lm(dense_tuned, ctx.train_data(), s.finetune_steps, learning_rate=3e-4, verbose=0)
    results["finetuned_dense"] = perplexity(dense_tuned, data) / dense_ppl
    rows.append((f"(reference) dense + the same {s.finetune_steps}-step fine-tune",
                 results["finetuned_dense"], ""))

    dense_size = keras_file_sizes(teacher)
    pruned_size = keras_file_sizes(strip_pruning(models["sparsegpt_50"]))
    results["gzip_size_ratio_50"] = pruned_size["gzip_bytes"] / dense_size["gzip_bytes"]

    structured = prune(teacher, PruneConfig(method="wanda", pattern="neurons", sparsity=0.3),
                       calibration=calib, verbose=0)
    results["structured_30_perplexity_ratio"] = perplexity(structured, data) / dense_ppl
    rows.append(("structured 30 % MLP neurons (wanda), no fine-tune",
                 results["structured_30_perplexity_ratio"], ""))
    with tempfile.TemporaryDirectory() as tmp:
        ratio, lat = tflite_latency_ratio(teacher, structured, s, Path(tmp))
        results["structured_30_latency_ratio"] = ratio
        results["structured_30_tflite"] = lat
        export_tflite(strip_pruning(models["sparsegpt_50"]), Path(tmp) / "sparse.tflite",
                      mode="float32", seq_len=s.seq_len)
        sparse_tflite = file_sizes(Path(tmp) / "sparse.tflite")
    results["tflite_gzip_size_ratio_50"] = (
        sparse_tflite["gzip_bytes"] / lat["sizes"]["dense"]["gzip_bytes"]
    )
    # --quick: one round of 3 steps (the first interval, fit's set-up, is dropped)
    results["fit_overhead"] = (fit_overhead(teacher, ctx, s.latency_rounds, 3) if args.quick
                               else fit_overhead(teacher, ctx))
    results["seconds"] = time.perf_counter() - start

    table = [
        f"Demo teacher ({teacher.count_params():,} params), held-out perplexity "
        f"{dense_ppl:.3f} on {s.eval_windows} test windows of {s.seq_len} tokens; "
        f"{s.calibration_windows} training windows for calibration; transformer-block "
        "kernels pruned (embeddings and LM head dense).",
        "",
        "| variant | perplexity ratio to dense | prune time |",
        "|---|---|---|",
        *[f"| {name} | {ratio:.3f} | {t} |" for name, ratio, t in rows],
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| gzip .keras size ratio, SparseGPT 50 % | {results['gzip_size_ratio_50']:.3f} | – |",
        f"| gzip .tflite size ratio, SparseGPT 50 % | {results['tflite_gzip_size_ratio_50']:.3f}"
        " | – |",
        f"| fit step time, pruning-aware / plain (interleaved, median) | "
        f"{results['fit_overhead']:.3f} | ≤ 1.2 |",
        f"| TFLite batch-1 latency, structured 30 % / dense (interleaved) | "
        f"{results['structured_30_latency_ratio']:.3f} ({lat['small_ms']:.2f} vs "
        f"{lat['dense_ms']:.2f} ms) | < 1 |",
    ]
    write_results("prune", "\n".join(table), results, args)


if __name__ == "__main__":
    main()
