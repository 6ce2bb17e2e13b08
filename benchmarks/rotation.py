"""SmolLM2-135M with its residual stream rotated (`tfcompress.quantize.rotate`): is it still
the same float model, and does int4 on LiteRT's grid lose less after rotation?

Rows: the float port and its rotated copy (max relative logit difference, perplexity, the
residual stream's peak |x| and peak-to-RMS ratio after every block); int4 on LiteRT's blockwise
grid (`QuantizeConfig.litert_int4`: symmetric, groups of 32) by round-to-nearest and by GPTQ
with act-order, each on the float and on the rotated model (``--sources``; ``online``: rotated
with QuaRot's online Hadamard before each down projection too), the same calibration windows;
then each as `export_llm` bundles (int4 from its GPTQ act-order copy, also within
``--budget-mb``; dynamic_int8 from the float weights), their perplexity through `LLMRunner`.
Only the blocks' matmuls are quantized to int4 (`benchmarks.llm.BLOCK_DENSE`), as
`benchmarks.generate`'s int4 bundle does: the embedding (tied head) and the rotated model's
``final_mix`` stay float in Keras, int8 in bundles.

Data and protocol are `benchmarks.llm`'s: perplexity on the first 2,049 tokens of
austen/test.txt in windows of 256; calibration windows drawn from austen/train.txt.

    python -m benchmarks.rotation                     # everything, writes results/rotation.json
    python -m benchmarks.rotation --methods float rotated rtn
    python -m benchmarks.rotation --quick             # seconds, a tiny random Llama GGUF
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np

from benchmarks._common import QUICK, bench_parser, parse_args, scratch_dir, write_results
from benchmarks.llm import BLOCK_DENSE, Bench

METHODS = ("float", "rotated", "rtn", "gptq_act", "bundle_int4", "bundle_int4_budget",
           "bundle_dynamic_int8")
TARGETS = {"rtn_rotated": "< rtn", "gptq_act_rotated": "< gptq_act"}


def max_rel_logit_diff(a, b) -> float:
    """``max |a - b| / max |a|`` over every logit.

    Example:
        >>> max_rel_logit_diff(np.array([2.0, -4.0]), np.array([2.0, -3.9]))
        0.025
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(a).max())


def residual_outliers(model, ids: np.ndarray) -> dict:
    """Peak ``|x|`` and mean per-token peak-to-RMS ratio of the residual stream after every
    block of a `build_llama` model, on one window ``ids`` ``(1, n)``."""
    import keras

    blocks = sorted((la for la in model.layers if la.name.endswith("_add2")),
                    key=lambda la: int(la.name[len("block"):].split("_")[0]))
    streams = keras.Model(model.inputs, [la.output for la in blocks])([ids])
    peaks, ratios = [], []
    for x in streams:
        x = np.asarray(x, np.float64)[0]
        peaks.append(float(np.abs(x).max()))
        ratios.append(float(np.mean(np.abs(x).max(-1) / np.sqrt((x ** 2).mean(-1)))))
    return {"peak_abs": max(peaks), "peak_to_rms": float(np.mean(ratios)),
            "peak_to_rms_max_block": max(ratios)}


def rotated_model(model, online: bool = False):
    """``model`` rotated as every rotated row here (and `benchmarks.generate`'s) is: QuaRot's
    randomised Hadamard of seed 0 on the residual stream, norm scales folded first;
    ``online``: also a Hadamard before each MLP down projection."""
    from tfcompress.quantize import rotate

    return rotate(model, seed=0, online=online)


class Rotation:
    """The float and rotated models, the rows measured so far, and writing them."""

    def __init__(self, args):
        self.args, self.b = args, Bench(args)
        self.rows: dict[str, dict] = {}
        self.data: dict = {"failures": {}, "seconds": {"load_gguf": self.b.seconds["load_gguf"]}}
        self.models: dict = {"float": self.b.float_model}

    def folded(self):
        """The control: norm scales folded (the tied head through final_mix), no rotation
        (``matrix=I``)."""
        if "folded" not in self.models:
            from tfcompress.quantize import rotate

            d = int(self.b.float_model.get_layer("token_embedding").output_dim)
            self.models["folded"] = rotate(self.b.float_model, matrix=np.eye(d))
        return self.models["folded"]

    def rotated(self, online: bool = False):
        name = "online" if online else "rotated"
        if name not in self.models:
            start = time.perf_counter()
            self.models[name] = rotated_model(self.b.float_model, online)
            self.data["seconds"][f"rotate_{name}"] = round(time.perf_counter() - start, 1)
        return self.models[name]

    def online(self):
        """Rotated, with the online Hadamard before each MLP down projection."""
        return self.rotated(online=True)

    def record(self, name: str, model, seconds: float, note: str, stored_bytes: int | None = None,
               ppl: float | None = None) -> None:
        start = time.perf_counter()
        ppl = self.b.perplexity(model) if ppl is None else ppl
        weights = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
        self.rows[name] = {"ppl": ppl, "stored_mb": (stored_bytes or weights) / 1e6,
                           "note": note}
        self.data["seconds"][name] = round(seconds, 1)
        self.data["seconds"][f"{name}_eval"] = round(time.perf_counter() - start, 1)
        print(f"== {name}: ppl {ppl:.3f} ({seconds:.0f} s) {note}", flush=True)
        self.write()

    def write(self) -> None:
        base = self.rows.get("float", {}).get("ppl")
        lines = ["| model | perplexity | ratio to float | stored MB | target | notes |",
                 "|---|---|---|---|---|---|"]
        for name, row in self.rows.items():
            ratio = row["ppl"] / base if base else float("nan")
            if name != "float":
                self.data[name] = ratio
            lines.append(f"| {name} | {row['ppl']:.2f} | {ratio:.3f} | {row['stored_mb']:.1f} | "
                         f"{TARGETS.get(name, '-')} | {row['note']} |")
        self.data |= {"float_ppl": base, "rows": self.rows,
                      "eval": f"first {self.b.eval_tokens} tokens of austen/test.txt, windows of "
                              f"{self.b.window}", "calibration": self.b.calib_note}
        self.table = "\n".join(lines)
        write_results(self.args.name, self.table, self.data, self.args)


def run_float(r: Rotation) -> None:
    r.record("float", r.b.float_model, r.b.seconds["load_gguf"], "GGUF dequantized")


def run_rotated(r: Rotation) -> None:
    from tfcompress.evaluate import keras_forward

    rotated = r.rotated()
    window = np.asarray(r.b.eval_ids[:r.b.window], np.int32)[None]
    float_forward, rotated_forward = keras_forward(r.b.float_model), keras_forward(rotated)
    diff = max_rel_logit_diff(float_forward(window), rotated_forward(window))
    r.data["rotation_max_rel_logit_diff"] = diff
    r.data["residual_stream"] = {"float": residual_outliers(r.b.float_model, window),
                                 "rotated": residual_outliers(rotated, window)}
    extra = rotated.count_params() - r.b.float_model.count_params()
    r.data["final_mix_params"] = extra
    stream = r.data["residual_stream"]
    r.record("rotated", rotated, r.data["seconds"]["rotate_rotated"],
             f"randomised Hadamard, seed 0; max rel logit diff {diff:.1e}; head tied, "
             f"final_mix +{extra:,} params; residual peak |x| {stream['float']['peak_abs']:.0f}"
             f" -> {stream['rotated']['peak_abs']:.0f}, peak/RMS "
             f"{stream['float']['peak_to_rms']:.1f} -> {stream['rotated']['peak_to_rms']:.1f}")


def _int4(method: str):
    def run(r: Rotation) -> None:
        from tfcompress.quantize import QuantizeConfig, quantize

        config = QuantizeConfig.litert_int4(method.split("_")[0], act_order=method != "rtn",
                                            types=("Dense",), include=BLOCK_DENSE, max_rows=None)
        for source in r.args.sources:
            model = r.b.float_model if source == "float" else getattr(r, source)()
            start = time.perf_counter()
            q = quantize(model, config,
                         calibration=r.b.calibration if method != "rtn" else None)
            name = method if source == "float" else f"{method}_{source}"
            calib = f", {r.b.calib_note} calibration" if method != "rtn" else ""
            r.record(name, q, time.perf_counter() - start,
                     f"{method.upper().replace('_ACT', ' act-order')} int4 LiteRT grid (g32) on "
                     f"block matmuls{calib}; {source} model")
            if method == "gptq_act":  # kept for its int4 bundle
                r.models[name] = q
            del q
            gc.collect()
    return run


def _bundle(mode: str, budget: bool = False):
    def run(r: Rotation) -> None:
        for source in r.args.sources:
            _export(r, mode, source, r.args.budget_mb if budget else None)
    return run


def _export(r: Rotation, mode: str, source: str, budget_mb: float | None = None) -> None:
    """The ``source`` model's ``mode`` bundle (int4: from its GPTQ act-order copy, within
    ``budget_mb`` if given, the int8 maps rounded from ``source``'s float weights), its
    perplexity through `LLMRunner`."""
    from benchmarks.generate import exported_perplexity
    from tfcompress.export import export_llm

    name, model = source, r.b.float_model if source == "float" else getattr(r, source)()
    float_model = model  # what the budget's int8 maps are rounded from
    if mode == "int4":
        name = "gptq_act" if source == "float" else f"gptq_act_{source}"
        if name not in r.models:
            _int4("gptq_act")(r)
        model = r.models[name]
    row = f"bundle_{mode}_budget_{source}" if budget_mb else f"bundle_{mode}_{source}"
    folder = Path(r.args.out) / row
    start = time.perf_counter()
    kwargs = {"prefill_lengths": (8,), "cache_length": 64} if r.args.quick else {}
    if budget_mb:
        kwargs |= {"budget_mb": budget_mb, "calibration": np.concatenate(r.b.calibration),
                   "float_model": float_model}
    # export_llm's defaults otherwise: its verification on text included
    result = export_llm(model, folder, mode=mode, tokenizer=r.b.gguf, **kwargs)
    seconds = time.perf_counter() - start
    ppl = exported_perplexity(folder, r.b.eval_ids, r.b.window)
    budget = f", budget_mb={budget_mb:g}" if budget_mb else ""
    r.record(row, model, seconds,
             f"export_llm(mode={mode!r}{budget}) of {name}, perplexity through LLMRunner; "
             f"default verification passed (next-token agreement {result.agreement}, "
             f"relative logit error {result.relative_error:.3f})",
             stored_bytes=result.bytes, ppl=ppl)
    if result.int4 is not None:
        r.data[f"{row}_layers"] = {k: len(v) if isinstance(v, list) else v
                                   for k, v in result.int4.items() if k != "budget"}


RUNS = {"float": run_float, "rotated": run_rotated, "rtn": _int4("rtn"),
        "gptq_act": _int4("gptq_act"), "bundle_int4": _bundle("int4"),
        "bundle_int4_budget": _bundle("int4", budget=True),
        "bundle_dynamic_int8": _bundle("dynamic_int8")}


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("rotation", __doc__)
    parser.add_argument("--gguf", default=None, help="a Llama GGUF file (default: the installed "
                        "SmolLM2-135M; under --quick a tiny random one)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--calib", type=int, default=16, help="calibration sequences")
    parser.add_argument("--calib-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--sources", nargs="*", default=["float", "rotated"],
                        choices=["float", "folded", "rotated", "online"], help="models the "
                        "int4 rows quantize; folded: norm scales folded, not rotated; online: "
                        "rotated with the online Hadamard before each down projection")
    parser.add_argument("--budget-mb", type=float, default=105.5, help="bundle_int4_budget's "
                        "file size (default: llama.cpp's Q4_K_M of SmolLM2)")
    parser.add_argument("--out", default="runs/rotation", help="where bundles go")
    parser.add_argument("--name", default="rotation", help="results file name")
    args = parse_args(parser, argv)
    if args.quick:
        args.calib, args.calib_len = QUICK.calibration_windows, QUICK.seq_len
        args.out = scratch_dir("rotation-quick-")
    # what benchmarks.llm's Bench reads: no merging, no peer (nor its ids), the float model loaded
    args.merge_from, args.peer, args.inplace, args.ids = [], None, False, None
    r = Rotation(args)
    for name in args.methods:
        try:
            RUNS[name](r)
        except Exception as err:  # noqa: BLE001 - record the failure, run the next row
            r.data["failures"][name] = f"{type(err).__name__}: {err}"[:500]
            print(f"== {name} FAILED: {r.data['failures'][name]}", flush=True)
            r.write()
        gc.collect()
    r.write()


if __name__ == "__main__":
    main()
