"""Quantization of the demo teacher: perplexity ratio to float and stored size for RTN, GPTQ
(ours and Keras's, same group size, calibration windows, damping and layers), k-means, NF4
and QAT; plus quantization times (measured in the same process, one after the other).

Usage: ``python -m benchmarks.quantize [--qat-steps N] [--quick]`` (the teacher is cached in
``$TFCOMPRESS_CACHE``, default ``~/.cache/tfcompress``)
"""

from __future__ import annotations

import time

from benchmarks._common import QUICK, bench_parser, demo_context, parse_args, write_results
from tfcompress.core.layers import copy_model
from tfcompress.evaluate import keras_file_sizes, keras_forward, lm_quality
from tfcompress.models.training import train_lm
from tfcompress.quantize import QuantizeConfig, qat, quantize, strip_qat

DENSE = ("Dense", "EinsumDense")


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("quantize", __doc__)
    parser.add_argument("--qat-steps", type=int, default=100)
    args = parse_args(parser, argv)
    if args.quick:
        args.qat_steps = QUICK.finetune_steps
    ctx = demo_context(args)
    group = ctx.settings.group_size
    teacher = ctx.teacher
    batches = ctx.eval_data()
    calib = ctx.calibration()

    def ppl(model) -> float:
        return lm_quality(keras_forward(model), batches)["perplexity"]

    float_ppl = ppl(teacher)
    float_bytes = keras_file_sizes(teacher)["bytes"]  # weights only: optimizer state left out
    group4 = dict(bits=4, granularity="group", group_size=group)
    # Keras's GPTQ runs op by op, column by column (seconds even at tiny size): --quick
    # leaves it the 128-column MLP output kernels out
    scope = "_attn/|_mlp_out" if args.quick else "_attn/"
    runs = {
        "int8_rtn": dict(method="rtn", bits=8),
        "int4_rtn": dict(method="rtn", types=DENSE, **group4),
        "int4_gptq": dict(method="gptq", types=DENSE, **group4),
        # Keras 3.15 cannot reload GPTQ-quantized attention, so keras_gptq refuses it
        "int4_gptq_keras": dict(method="keras_gptq", types=DENSE, exclude=scope, **group4),
        "int4_gptq_all": dict(method="gptq", **group4),
        "int3_rtn": dict(method="rtn", types=DENSE, bits=3, granularity="group",
                         group_size=group),
        "int3_gptq": dict(method="gptq", types=DENSE, bits=3, granularity="group",
                          group_size=group),
        "kmeans4": dict(method="rtn", scheme="kmeans", bits=4, granularity="channel"),
        "nf4": dict(method="rtn", scheme="nf4", **group4),
        "keras_int8": dict(method="keras_int8"),
    }
    rows, data, times = [], {}, {}
    for name, overrides in runs.items():
        print(f"== {name}")
        start = time.perf_counter()
        model = quantize(teacher, calibration=calib, verbose=0, **overrides)
        times[name] = time.perf_counter() - start
        data[name] = ppl(model) / float_ppl
        # Keras's GPTQ config holds the block sub-models and cannot be serialized
        size = (None if name == "int4_gptq_keras"
                else keras_file_sizes(model)["bytes"] / float_bytes)
        if name == "int4_gptq_all":
            data["int4_stored_size_ratio"] = size
        rows.append((name, overrides, data[name], size, times[name]))
    print("== float_ft (float fine-tuned like QAT, the fair reference for qat_int4)")
    tuned = copy_model(teacher)
    train_lm(tuned, ctx.train_data(), args.qat_steps, learning_rate=1e-4, verbose=2)
    data["float_ft"] = ppl(tuned) / float_ppl
    rows.append(("float_ft", {"steps": args.qat_steps}, data["float_ft"], 1.0, 0.0))
    print("== qat_int4")
    config = QuantizeConfig(**group4)
    start = time.perf_counter()
    student = qat(teacher, config)
    train_lm(student, ctx.train_data(), args.qat_steps, learning_rate=1e-4, verbose=2)
    model = quantize(strip_qat(student), config, verbose=0)
    times["qat_int4"] = time.perf_counter() - start
    data["qat_int4"] = ppl(model) / float_ppl
    rows.append(("qat_int4", {"qat_steps": args.qat_steps, **group4}, data["qat_int4"],
                 keras_file_sizes(model)["bytes"] / float_bytes, times["qat_int4"]))
    data["gptq_time_vs_keras"] = times["int4_gptq"] / times["int4_gptq_keras"]
    data["qat_int4_vs_float_ft"] = data["qat_int4"] / data["float_ft"]
    data.update(float_perplexity=float_ppl, float_bytes=float_bytes, seconds=times,
                eval_windows=ctx.settings.eval_windows, calibration_windows=len(calib))
    table = ["| run | settings | ppl ratio | stored size ratio | seconds |",
             "|---|---|---|---|---|"]
    for name, overrides, ratio, size, secs in rows:
        settings = ", ".join(f"{k}={v}" for k, v in overrides.items() if k != "types")
        if overrides.get("types") == DENSE:
            settings += ", Dense/EinsumDense only"
        size_text = "–" if size is None else f"{size:.3f}"
        table.append(f"| {name} | {settings} | {ratio:.4f} | {size_text} | {secs:.1f} |")
    table.append(f"\nfloat perplexity {float_ppl:.4f} on {ctx.settings.eval_windows} test windows; "
                 f"float .keras {float_bytes:,} bytes (weights only); our GPTQ / Keras GPTQ "
                 f"time {data['gptq_time_vs_keras']:.2f}x")
    write_results("quantize", "\n".join(table), data, args)


if __name__ == "__main__":
    main()
