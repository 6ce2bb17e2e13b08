"""Full-integer SmolLM2 bundles: `export_llm` modes ``int16x8`` and ``int8_static``.

Each bundle (prefill/decode signatures over the external KV cache; BOS's keys, values and logits
float constants at position 0, `tfcompress.export.llm_integer`) is calibrated on ``--calib``
windows of ``--calib-len`` Austen training tokens and scored through `LLMRunner` on the
evaluation of ``benchmarks/results/llm.json`` (the first 2,048 test tokens in windows of 256,
each from an empty cache), every window after BOS, as the bundle expects; the reference is the
float Keras model on BOS + the same window. Also recorded: next-token agreement with that
reference and the largest logit error over the scored tokens, the file's bytes, the export's
seconds, and whether these figures pass the mode's verification tolerances (the bundle is
exported unverified and judged on all 2,048 tokens, not export_llm's 128).

``--weights``, the bundle's source: ``default`` rows (``smollm2_<mode>_*``) export the float
model with `export_llm`'s defaults, as a user would: it rotates the residual stream first
(`export.llm_rotation`: QuaRot's Hadamard of seed 0, norm scales folded, an online one before
each MLP down projection; the same float function, narrower activation ranges for the
integer scales); ``unrotated`` rows (``smollm2_unrotated_<mode>_*``) the same with
``rotate=False``; ``gptq`` rows (``smollm2_gptq_<mode>_*``) the model whose blocks' matmuls
GPTQ (act-order, the same calibration windows) put on the int8 per-output-channel grid the
converter stores, so its rounding of them keeps GPTQ's choices (a quantized model is not
rotated); ``smollm2_gptq_keras_ppl_ratio`` is that Keras model's own perplexity ratio (the
weights' share of a bundle's). This is the evaluation of issue #29's done-when for the
integer bundles (``smollm2_<mode>_ppl_ratio``), kept apart from ``benchmarks.export`` (22
minutes loaded already) in ``export_llm_integer.json``.

Usage: ``python -m benchmarks.export_llm_integer [--modes int16x8 int8_static]
[--weights default unrotated gptq] [--calib 8] [--calib-len 256] [--quick]``
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import QUICK, bench_parser, parse_args, write_results
from benchmarks.llm import QUICK_TRAIN_CHARS, eval_sizes, gguf_path
from tfcompress.data import bundled_corpus
from tfcompress.errors import VerificationError
from tfcompress.export.llm import export_llm, keras_logits
from tfcompress.export.llm_integer import INTEGER_LLM_MODES
from tfcompress.export.llm_runner import LLMRunner
from tfcompress.export.modes import MODES
from tfcompress.export.verification import Tolerances, verify
from tfcompress.models.llama import lm_windows
from tfcompress.models.loaders import gguf_tokenizer, load_gguf
from tfcompress.models.loaders.gguf import _field, _reader

PREFILL = 64  # the bundle's prefill length (calibrated windows tile it)
# the bundle's source: the float model through export_llm's defaults (rotated) or with
# rotate=False, or GPTQ's int8 weights of it (`MAKERS`)
WEIGHTS = ("default", "unrotated", "gptq")


def compare(reference, bundle, ids: np.ndarray, window: int, bos: int) -> dict:
    """Perplexity of ``bundle`` and of ``reference`` (each ``ids (n,) -> logits (n, vocab)``)
    on ``ids`` in windows of ``window`` targets (`lm_windows`: each from an empty cache), each
    window after BOS, BOS's own row not scored; next-token agreement and the largest logit
    error (over the largest |reference logit|) on the scored tokens.

    Example:
        >>> same = lambda ids: np.eye(4)[ids]   # one logit per token, at itself
        >>> compare(same, same, np.arange(4), 2, 0)["agreement"]
        1.0
    """
    from tfcompress.core.quality import token_stats

    sums = np.zeros((2, 3))  # (bundle, reference) x (nll, hits, tokens)
    agree = count = err = peak = 0.0
    for x, y in lm_windows(ids, window):
        seq = np.concatenate([[bos], x[0]]).astype(np.int32)
        got, want = (np.asarray(f(seq), np.float64)[1:] for f in (bundle, reference))
        sums += [token_stats(got, y[0]), token_stats(want, y[0])]
        agree += float((got.argmax(-1) == want.argmax(-1)).sum())
        count += len(y[0])
        err, peak = max(err, float(np.abs(got - want).max())), max(peak, np.abs(want).max())
    return {"perplexity": float(np.exp(sums[0, 0] / sums[0, 2])),
            "keras_perplexity": float(np.exp(sums[1, 0] / sums[1, 2])),
            "agreement": agree / count, "max_abs_error": err, "relative_error": float(err / peak)}


def load(args) -> dict:
    """The float model, its GGUF, BOS, calibration windows and the scored ids."""
    path = gguf_path(args)
    tokenizer = gguf_tokenizer(path)
    text = bundled_corpus("austen")
    eval_tokens, window = eval_sizes(args.quick)
    train = tokenizer.encode(text["train"][:QUICK_TRAIN_CHARS if args.quick else 400_000])
    starts = np.random.default_rng(0).integers(0, train.size - args.calib_len, args.calib)
    return {"gguf": path, "model": load_gguf(path), "window": window,
            "bos": int(_field(_reader(path), "tokenizer.ggml.bos_token_id")),
            "calibration": np.stack([train[s:s + args.calib_len] for s in starts]),
            "eval_ids": tokenizer.encode(text["test"][:20_000])[:eval_tokens]}


def gptq_int8(data: dict) -> dict:
    """The float model with its blocks' matmuls GPTQ-quantized (act-order) onto LiteRT's int8
    per-output-channel grid from the calibration windows, its seconds, and its Keras
    perplexity ratio on the scored ids."""
    from benchmarks.llm import BLOCK_DENSE
    from tfcompress.quantize import GPTQConfig, quantize

    windows, start = data["calibration"], time.perf_counter()
    config = GPTQConfig(scheme="litert", bits=8, granularity="channel", types=("Dense",),
                        include=BLOCK_DENSE, act_order=True)
    model = quantize(data["model"], config, verbose=0,
                     calibration=[windows[i:i + 4] for i in range(0, len(windows), 4)])
    seconds = round(time.perf_counter() - start, 1)
    reference, own = keras_logits(data["model"]), keras_logits(model)
    figures = compare(lambda ids: reference(ids[None])[0], lambda ids: own(ids[None])[0],
                      data["eval_ids"], data["window"], data["bos"])
    return {"model": model, "smollm2_gptq_s": seconds,
            "smollm2_gptq_keras_ppl_ratio": figures["perplexity"] / figures["keras_perplexity"]}


MAKERS = {"gptq": gptq_int8}


def row_key(mode: str, weights: str) -> str:
    """The figures' prefix of a bundle: ``smollm2_<mode>``, ``smollm2_gptq_<mode>``."""
    return f"smollm2_{mode}" if weights == "default" else f"smollm2_{weights}_{mode}"


def run_mode(mode: str, data: dict, out: Path, weights: str = "default") -> dict:
    """Export ``mode`` from the float model (``rotate=False`` for ``unrotated``) or from
    ``data[weights]["model"]`` (unverified: its figures are judged below with the mode's
    tolerances, on all the scored tokens; rotation included in the export's seconds) and
    score it against the float model: its figures, keyed `row_key`."""
    key = row_key(mode, weights)
    source = data[weights]["model"] if weights in MAKERS else data["model"]
    start = time.perf_counter()
    result = export_llm(source, out / key,
                        prefill_lengths=(min(PREFILL, data["window"] // 2),),
                        cache_length=data["window"] + 8, mode=mode, tokenizer=data["gguf"],
                        special_tokens={"bos": data["bos"]}, calibration=data["calibration"],
                        verify_output=False, **({"rotate": False} if weights == "unrotated"
                                                else {}))
    seconds = round(time.perf_counter() - start, 1)
    reference = keras_logits(data["model"])
    figures = compare(lambda ids: reference(ids[None])[0], LLMRunner(out / key).logits,
                      data["eval_ids"], data["window"], data["bos"])
    try:
        verify(figures, Tolerances.of(MODES[mode]), subject=f"{mode} bundle")
        check = "passes"
    except VerificationError as err:
        check = str(err)
    return {f"{key}_{name}": value for name, value in figures.items()} | {
        f"{key}_ppl_ratio": figures["perplexity"] / figures["keras_perplexity"],
        f"{key}_export_s": seconds, f"{key}_mb": result.bytes / 1e6,
        f"{key}_rotation": result.rotation, f"{key}_verification": check}


def table(figures: dict, keys: list[tuple[str, str]]) -> str:
    lines = [f"{figures['model']} bundles, {figures['calibration']}; perplexity on "
             f"{figures['eval']} after BOS; `default`: export_llm's defaults, which rotate "
             f"the residual stream first (QuaRot's Hadamard, online before each down "
             f"projection: the same float function).", "",
             "| mode | exported from | perplexity | ratio to Keras | agreement | "
             "max error / max logit | MB | export s | the mode's tolerances |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, weights in keys:
        k = row_key(mode, weights)
        if f"{k}_perplexity" not in figures:
            lines.append(f"| {mode} | {weights} | – | – | – | | | | "
                         f"{figures.get(f'{k}_error', '')} |")
            continue
        lines.append(f"| {mode} | {weights} | {figures[f'{k}_perplexity']:.3f} | "
                     f"{figures[f'{k}_ppl_ratio']:.4f} | {figures[f'{k}_agreement']:.3f} | "
                     f"{figures[f'{k}_relative_error']:.3f} | {figures[f'{k}_mb']:.1f} | "
                     f"{figures[f'{k}_export_s']} | {figures[f'{k}_verification']} |")
    if "smollm2_gptq_keras_ppl_ratio" in figures:
        lines += ["", f"GPTQ int8 (act-order, LiteRT's per-channel grid) of the blocks' "
                      f"matmuls: {figures['smollm2_gptq_s']} s; that Keras model's perplexity "
                      f"is {figures['smollm2_gptq_keras_ppl_ratio']:.4f}x the float one's."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("export_llm_integer", __doc__)
    parser.add_argument("--gguf", default=None, help="a Llama GGUF file (default: the installed "
                        "SmolLM2-135M; under --quick a tiny random one)")
    parser.add_argument("--modes", nargs="+", default=list(INTEGER_LLM_MODES),
                        choices=INTEGER_LLM_MODES)
    parser.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=WEIGHTS,
                        help="the bundle's source: the float model with export_llm's defaults "
                             "(rotated first) or rotate=False, or GPTQ's int8 weights of it "
                             "(act-order, on the converter's grid)")
    parser.add_argument("--calib", type=int, default=8, help="calibration windows")
    parser.add_argument("--calib-len", type=int, default=256, help="tokens per window")
    args = parse_args(parser, argv)
    if args.quick:
        args.calib, args.calib_len = 2, QUICK.seq_len
    with tempfile.TemporaryDirectory() as tmp:
        args.out = tmp  # where --quick writes its tiny GGUF
        data = load(args)
        figures = {"model": Path(data["gguf"]).stem,
                   "calibration": f"{args.calib} windows of {args.calib_len} Austen training "
                                  f"tokens", "window": data["window"], "bos": data["bos"],
                   "eval": f"the first {len(data['eval_ids']) - 1} test tokens in windows of "
                           f"{data['window']}"}
        keys = [(mode, weights) for weights in args.weights for mode in args.modes]
        for mode, weights in keys:
            try:
                if weights in MAKERS and weights not in data:
                    data[weights] = MAKERS[weights](data)
                    figures |= {k: v for k, v in data[weights].items() if k != "model"}
                figures |= run_mode(mode, data, Path(tmp), weights)
            except Exception as err:  # noqa: BLE001 - recorded, the next mode still runs
                figures[f"{row_key(mode, weights)}_error"] = f"{type(err).__name__}: {err}"[:400]
            write_results("export_llm_integer", table(figures, keys), figures, args)


if __name__ == "__main__":
    main()
