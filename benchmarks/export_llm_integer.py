"""Full-integer SmolLM2 bundles: `export_llm` modes ``int16x8`` and ``int8_static``.

Each bundle (prefill/decode signatures over the external KV cache; BOS's keys, values and logits
float constants at position 0, `tfcompress.export.llm_integer`) is calibrated on ``--calib``
windows of ``--calib-len`` Austen training tokens and scored through `LLMRunner` on the
evaluation of ``benchmarks/results/llm.json`` (the first 2,048 test tokens in windows of 256,
each from an empty cache), every window after BOS, as the bundle expects; the reference is the
float Keras model on BOS + the same window. Also recorded: next-token agreement with that
reference over the scored tokens, the file's bytes, the export's seconds and its own
verification (on 128 test tokens, the mode's tolerances; a bundle that fails it is exported
again unverified and scored all the same, the failure noted). This is the evaluation of issue #29's
done-when for the integer bundles (``smollm2_<mode>_ppl_ratio``), kept apart from
``benchmarks.export`` (22 minutes loaded already) in ``export_llm_integer.json``.

Usage: ``python -m benchmarks.export_llm_integer [--modes int16x8 int8_static] [--calib 8]
[--calib-len 256] [--quick]``
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
from tfcompress.models import causal_lm_perplexity
from tfcompress.models.loaders import gguf_tokenizer, load_gguf
from tfcompress.models.loaders.gguf import _field, _reader

PREFILL = 64  # the bundle's prefill length (calibrated windows tile it)


def after_bos(logits_of, bos: int):
    """``ids (1, n) -> logits (1, n, vocab)`` of ``logits_of`` (ids ``(n + 1,)`` -> logits)
    run on BOS + ids, BOS's own row dropped: `causal_lm_perplexity`'s protocol after BOS.

    Example:
        >>> after_bos(lambda ids: np.eye(4)[ids], 0)(np.array([[2, 3]])).argmax(-1)
        array([[2, 3]])
    """
    def predict(x):
        ids = np.concatenate([[bos], np.asarray(x).reshape(-1)]).astype(np.int32)
        return np.asarray(logits_of(ids))[1:][None]
    return predict


def scored(predict, ids: np.ndarray, window: int) -> tuple[float, np.ndarray]:
    """Perplexity of ``predict`` on ``ids`` in windows and its next token for each scored."""
    picks = []

    def keep(x):
        logits = predict(x)
        picks.append(logits.argmax(-1).reshape(-1))
        return logits
    ppl = causal_lm_perplexity(keep, ids, window, verbose=True)["perplexity"]
    return ppl, np.concatenate(picks)


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


def run_mode(mode: str, data: dict, out: Path, keras_ppl: float,
             keras_picks: np.ndarray) -> dict:
    """Export ``mode`` and score it: its figures, keyed ``smollm2_<mode>_*``."""
    key = f"smollm2_{mode}"
    start = time.perf_counter()

    def export(verify: bool):
        return export_llm(data["model"], out / mode,
                          prefill_lengths=(min(PREFILL, data["window"] // 2),),
                          cache_length=data["window"] + 8, mode=mode, tokenizer=data["gguf"],
                          special_tokens={"bos": data["bos"]}, calibration=data["calibration"],
                          verify_output=verify)
    try:
        result = export(True)
        figures = {f"{key}_verify_ppl_ratio": result.perplexity / result.keras_perplexity,
                   f"{key}_verify_agreement": result.agreement}
    except VerificationError as err:  # its figures are in the message; scored all the same
        figures = {f"{key}_note": f"export_llm's verification failed: {err}"[:600]}
        result = export(False)
    figures |= {f"{key}_export_s": round(time.perf_counter() - start, 1),
                f"{key}_mb": result.bytes / 1e6}
    runner = LLMRunner(out / mode)
    ppl, picks = scored(after_bos(runner.logits, data["bos"]), data["eval_ids"], data["window"])
    return figures | {f"{key}_ppl": ppl, f"{key}_ppl_ratio": ppl / keras_ppl,
                      f"{key}_agreement": float((picks == keras_picks).mean())}


def table(figures: dict, modes: list[str]) -> str:
    lines = [f"{figures['model']} bundles, {figures['calibration']}; perplexity on "
             f"{figures['eval']} after BOS.", "",
             "| mode | perplexity | ratio to Keras | agreement | MB | export s | note |",
             "|---|---|---|---|---|---|---|",
             f"| keras float32 | {figures['keras_ppl']:.3f} | 1 | 1 | | | |"]
    for mode in modes:
        k = f"smollm2_{mode}"
        if f"{k}_ppl" not in figures:
            lines.append(f"| {mode} | – | – | – | | | {figures.get(f'{k}_note', '')} |")
            continue
        lines.append(f"| {mode} | {figures[f'{k}_ppl']:.3f} | {figures[f'{k}_ppl_ratio']:.4f} "
                     f"| {figures[f'{k}_agreement']:.3f} | {figures[f'{k}_mb']:.1f} "
                     f"| {figures[f'{k}_export_s']} | {figures.get(f'{k}_note', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("export_llm_integer", __doc__)
    parser.add_argument("--gguf", default=None, help="a Llama GGUF file (default: the installed "
                        "SmolLM2-135M; under --quick a tiny random one)")
    parser.add_argument("--modes", nargs="+", default=list(INTEGER_LLM_MODES),
                        choices=INTEGER_LLM_MODES)
    parser.add_argument("--calib", type=int, default=8, help="calibration windows")
    parser.add_argument("--calib-len", type=int, default=256, help="tokens per window")
    args = parse_args(parser, argv)
    if args.quick:
        args.calib, args.calib_len = 2, QUICK.seq_len
    with tempfile.TemporaryDirectory() as tmp:
        args.out = tmp  # where --quick writes its tiny GGUF
        data = load(args)
        reference = keras_logits(data["model"])
        keras_ppl, picks = scored(after_bos(lambda ids: reference(ids[None])[0], data["bos"]),
                                  data["eval_ids"], data["window"])
        figures = {"model": Path(data["gguf"]).stem, "keras_ppl": keras_ppl,
                   "calibration": f"{args.calib} windows of {args.calib_len} Austen training "
                                  f"tokens", "window": data["window"], "bos": data["bos"],
                   "eval": f"the first {len(data['eval_ids']) - 1} test tokens in windows of "
                           f"{data['window']}"}
        for mode in args.modes:
            figures |= run_mode(mode, data, Path(tmp), keras_ppl, picks)
            write_results("export_llm_integer", table(figures, args.modes), figures, args)


if __name__ == "__main__":
    main()
