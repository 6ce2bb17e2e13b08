"""Demo teacher: held-out perplexity, and Keras vs TFLite latency at batch 1 and batched.

Run: ``python -m benchmarks.foundation [--quick]`` (uses the demo teacher cached in
``$TFCOMPRESS_CACHE``, default ``~/.cache/tfcompress``, training it if needed).
"""

from __future__ import annotations

import tempfile

from benchmarks._common import QUICK, bench_parser, demo_context, parse_args, write_results
from tfcompress.evaluate import compare, evaluate
from tfcompress.export import export_tflite


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("foundation", __doc__)
    parser.add_argument("--windows", type=int, default=1024, help="held-out windows to score")
    parser.add_argument("--repeats", type=int, default=20)
    args = parse_args(parser, argv)
    if args.quick:
        args.windows, args.repeats = QUICK.eval_windows, QUICK.latency_repeats

    ctx = demo_context(args)
    s = ctx.settings
    teacher = ctx.teacher
    x, y, m = ctx.corpus.windows("test", s.seq_len, args.windows)
    batches = [(x[i : i + 64], y[i : i + 64], m[i : i + 64]) for i in range(0, len(x), 64)]
    sizes = (1, s.batch_size)
    keras_report = evaluate(teacher, batches, name="teacher (keras)", seq_len=s.seq_len,
                            batch_sizes=sizes, repeats=args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        reports = [keras_report]
        # --quick: one conversion (float16 is the same code path; export.py covers the modes)
        for mode in ("float32",) if args.quick else ("float32", "float16"):
            path = export_tflite(teacher, f"{tmp}/teacher-{mode}.tflite", mode=mode,
                                 seq_len=s.seq_len).path
            reports.append(evaluate(path, batches, name=f"teacher (tflite {mode})",
                                    batch_sizes=sizes, repeats=args.repeats,
                                    params=keras_report.params))
    table = compare(reports, baseline="teacher (keras)")
    latency = {r.name: {b: r.latency[str(b)]["median_ms"] for b in sizes} for r in reports}
    table += "\n\n| model | " + " | ".join(f"batch {b} median ms" for b in sizes) + " |\n"
    table += "|---|" + "---|" * len(sizes) + "\n"
    table += "\n".join(f"| {n} | " + " | ".join(f"{v[b]:.2f}" for b in sizes) + " |"
                       for n, v in latency.items())
    write_results(
        "foundation",
        table,
        {
            "teacher_params": keras_report.params,
            "teacher_ppl": keras_report.quality["perplexity"],
            "teacher_accuracy": keras_report.quality["accuracy"],
            "eval_tokens": keras_report.quality["tokens"],
            "latency_ms": latency,
            "tflite_f32_ppl": reports[1].quality["perplexity"],
            "tflite_speedup_b1": keras_report.latency["1"]["median_ms"]
            / reports[1].latency["1"]["median_ms"],
        },
        args,
    )


if __name__ == "__main__":
    main()
