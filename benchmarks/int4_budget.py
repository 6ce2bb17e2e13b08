"""SmolLM2-135M int4 bundles with and without ``budget_mb`` (`export_llm`: the maps whose int4
rounding costs most output error per extra byte kept int8, `tfcompress.export.llm_budget`),
and the dynamic_int8 bundle whose tied table is now stored once.

Every bundle is exported from the float port (int4: round-to-nearest onto LiteRT's block-32
grid, as llama.cpp's Q4_K_M is made from F16 without calibration data beyond its own choice),
verified by `export_llm`'s default check on text, and scored through `LLMRunner` on
`benchmarks.llm`'s protocol (first 2,049 tokens of austen/test.txt in windows of 256,
`benchmarks.generate.exported_perplexity`); the budget's sensitivity is measured on
``--calib`` x ``--calib-len`` tokens of austen/train.txt (no test text).

    python -m benchmarks.int4_budget                      # writes results/int4_budget.json
    python -m benchmarks.int4_budget --methods int4 int4_budget --budget-mb 105.5
    python -m benchmarks.int4_budget --quick              # a tiny random Llama GGUF, seconds
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks._common import QUICK, bench_parser, parse_args, scratch_dir, write_results
from benchmarks.llm import Bench

METHODS = ("float", "int4", "int4_budget", "dynamic_int8")
Q4_K_M_MB = 105.5  # llama.cpp's Q4_K_M of the same GGUF (issue #25's table)


def export(b: Bench, args, name: str, mode: str, **budget) -> dict:
    """One bundle of the float model: its size, perplexity through LLMRunner, and for a
    budget the per-map choice."""
    from benchmarks.generate import exported_perplexity
    from tfcompress.export import export_llm

    folder = Path(args.out) / name
    # --quick: a random toy, whose int4 fails the check on text; SmolLM2 takes the defaults
    kwargs = ({"prefill_lengths": (8,), "cache_length": 64, "verify_output": False}
              if args.quick else {})
    start = time.perf_counter()
    result = export_llm(b.float_model, folder, mode=mode, tokenizer=b.gguf, **kwargs, **budget)
    seconds = time.perf_counter() - start
    row = {"mb": result.bytes / 1e6, "ppl": exported_perplexity(folder, b.eval_ids, b.window),
           "export_s": round(seconds, 1), "verified_agreement": result.agreement}
    if budget:
        report = result.int4["budget"]
        kinds = Counter(n.split(".")[1] for n in report["int8"])
        row |= {"budget_mb": report["budget_mb"], "estimated_mb": report["estimated_mb"],
                "int8": report["int8"], "int8_by_kind": dict(kinds),
                "int8_by_layer": dict(Counter(int(n.split(".")[0]) for n in report["int8"])),
                "sensitivity": report["sensitivity"]}
    return row


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("int4_budget", __doc__)
    parser.add_argument("--gguf", default=None, help="a Llama GGUF file (default: the installed "
                        "SmolLM2-135M; under --quick a tiny random one)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--budget-mb", type=float, default=Q4_K_M_MB)
    parser.add_argument("--calib", type=int, default=16, help="calibration sequences")
    parser.add_argument("--calib-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--out", default="runs/int4_budget", help="where bundles go")
    parser.add_argument("--name", default="int4_budget", help="results file name")
    args = parse_args(parser, argv)
    if args.quick:
        args.calib, args.calib_len = QUICK.calibration_windows, QUICK.seq_len
        args.out = scratch_dir("int4-budget-quick-")
    args.merge_from, args.peer, args.inplace, args.ids = [], None, False, None  # what Bench reads
    b = Bench(args)
    rows: dict[str, dict] = {}
    data: dict = {"failures": {}, "eval": f"first {b.eval_tokens} tokens of austen/test.txt, "
                  f"windows of {b.window}", "calibration": b.calib_note}
    calibration = np.concatenate(b.calibration)
    budget_mb = args.budget_mb if not args.quick else None
    for method in args.methods:
        try:
            if method == "float":
                rows["float"] = {"mb": sum(int(np.prod(v.shape)) * 4 for v in
                                           b.float_model.weights) / 1e6,
                                 "ppl": b.perplexity(b.float_model)}
            elif method == "int4_budget":
                if budget_mb is None:  # --quick: the toy's plain int4 file plus 10 %
                    budget_mb = rows.get("int4", {}).get("mb", 0.1) * 1.1
                rows[f"int4_budget_{budget_mb:g}"] = export(
                    b, args, "int4-budget", "int4", budget_mb=budget_mb,
                    calibration=calibration)
            else:
                rows[method] = export(b, args, method, method)
        except Exception as err:  # noqa: BLE001 - record the failure, run the next row
            data["failures"][method] = f"{type(err).__name__}: {err}"[:500]
            print(f"== {method} FAILED: {data['failures'][method]}", flush=True)
        gc.collect()
        _write(rows, data, args)


def _write(rows: dict, data: dict, args) -> None:
    base = rows.get("float", {}).get("ppl")
    lines = ["| bundle | file MB | perplexity | ratio to float | int8 maps |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        ratio = row["ppl"] / base if base else float("nan")
        if name != "float":
            data[f"{name}_ppl_ratio"] = ratio
            data[f"{name}_mb"] = row["mb"]
        int8 = "-" if "int8" not in row else f"{len(row['int8'])}: {row['int8_by_kind']}"
        lines.append(f"| {name} | {row['mb']:.1f} | {row['ppl']:.2f} | {ratio:.3f} | {int8} |")
    data |= {"float_ppl": base, "rows": rows, "q4_k_m_mb": Q4_K_M_MB}
    write_results(args.name, "\n".join(lines), data, args)


if __name__ == "__main__":
    main()
