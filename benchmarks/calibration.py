"""Data-aware methods on the demo teacher: the rows of prune.py, quantize.py and lowrank.py
that calibrate (Wanda, SparseGPT, GPTQ, ASVD, SVD-LLM), with their time, for a before/after
comparison of the calibration plumbing without re-running fine-tunes, QAT and TFLite
(run it on each commit to compare: every result records its commit).

    python -m benchmarks.calibration
    python -m benchmarks.calibration --rows lowrank --name calibration_lowrank
"""

from __future__ import annotations

import re
import time

from benchmarks import _common as common
from tfcompress.evaluate import keras_forward, lm_quality
from tfcompress.lowrank import FactorizeConfig, factorize
from tfcompress.prune import PruneConfig, prune
from tfcompress.quantize import quantize


def main(argv: list[str] | None = None) -> None:
    parser = common.bench_parser("calibration", __doc__)
    parser.add_argument("--name", default="calibration", help="results file name")
    parser.add_argument("--rows", default="", help="regex: run only the rows it matches")
    args = common.parse_args(parser, argv)
    ctx = common.demo_context(args)
    teacher, data, calib = ctx.teacher, ctx.eval_data(), ctx.calibration()

    def ppl(model) -> float:
        return lm_quality(keras_forward(model), data)["perplexity"]

    sparse = PruneConfig(method="sparsegpt", sparsity=0.5, include="block")  # the demo's
    group = dict(granularity="group", group_size=ctx.settings.group_size,
                 types=("Dense", "EinsumDense"))
    runs = {
        "wanda_50": lambda: prune(teacher, sparse, calibration=calib, method="wanda"),
        "wanda_24": lambda: prune(teacher, sparse, calibration=calib, method="wanda",
                                  pattern="2:4"),
        "sparsegpt_50": lambda: prune(teacher, sparse, calibration=calib),
        "sparsegpt_24": lambda: prune(teacher, sparse, calibration=calib, pattern="2:4"),
        "int4_gptq": lambda: quantize(teacher, calibration=calib, verbose=0, method="gptq",
                                      bits=4, **group),
        "int3_gptq": lambda: quantize(teacher, calibration=calib, verbose=0, method="gptq",
                                      bits=3, **group),
    }
    for name, method in (("asvd", "asvd"), ("aware", "svd-llm")):
        for ratio in (0.8, 0.6):
            runs[f"lowrank_{name}_{int(ratio * 100)}"] = (
                lambda m=method, r=ratio: factorize(teacher, FactorizeConfig(
                    method=m, target_ratio=r, include=r"_attn|_mlp_"), calibration=calib,
                    verbose=False))
    dense = ppl(teacher)
    results, rows = {"dense_perplexity": dense}, []
    for name, run in runs.items():
        if not re.search(args.rows, name):
            continue
        start = time.perf_counter()
        model = run()
        seconds = time.perf_counter() - start
        results[name] = {"ppl_ratio": ppl(model) / dense, "seconds": round(seconds, 1)}
        rows.append(f"| {name} | {results[name]['ppl_ratio']:.4f} | {seconds:.1f} |")
        print(rows[-1], flush=True)
    table = "\n".join([
        f"Demo teacher, dense perplexity {dense:.3f} on {ctx.settings.eval_windows} test "
        f"windows; calibration {len(calib)} training windows.",
        "",
        "| run | ppl ratio to dense | seconds |", "|---|---|---|", *rows])
    common.write_results(args.name, table, results, args)


if __name__ == "__main__":
    main()
