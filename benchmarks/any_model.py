"""Compress KerasHub CausalLMs used directly (dict inputs): perplexity ratio per verb.

Small random GPT2CausalLM / LlamaCausalLM / GemmaCausalLM configs (presets cannot be
downloaded here) are trained briefly on the bundled Austen corpus, then pruned (Wanda 50 %),
quantized (RTN int8, GPTQ int4 g32) and factorized (SVD-LLM, 60 % of the parameters), each
on a copy. Every compressed model is saved and reloaded (exact logits checked) and measured
on held-out windows: perplexity relative to its float model, and ``.keras`` size.

Run: ``python -m benchmarks.any_model [--steps 150] [--quick]`` (``--quick``: d=32 models over
32-token windows, the quick steps and windows of ``benchmarks._common.QUICK``)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np

import tfcompress as tfc
from benchmarks._common import QUICK, bench_parser, parse_args, write_results
from tfcompress.core.signature import model_inputs
from tfcompress.models.training import train_lm

SEQ, HIDDEN, CALIBRATION_WINDOWS = 64, 64, 32


def build(kind: str, vocab: int, seq: int, hidden: int):
    from tests.llm_checkpoints import tiny_causal_lm

    keras.utils.set_random_seed(0)
    short = {"GPT2CausalLM": "gpt2", "LlamaCausalLM": "llama", "GemmaCausalLM": "gemma"}[kind]
    return tiny_causal_lm(short, vocab, seq, layers=2, hidden=hidden, heads=4, kv_heads=2,
                          head_dim=16)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("any_model", __doc__)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-windows", type=int, default=64)
    args = parse_args(parser, argv)
    seq, hidden, n_calib = SEQ, HIDDEN, CALIBRATION_WINDOWS
    if args.quick:
        args.steps, args.eval_windows = QUICK.finetune_steps, QUICK.eval_windows
        seq, hidden, n_calib = QUICK.seq_len, 32, QUICK.calibration_windows
    corpus = tfc.data.load_corpus("austen")
    x, y, m = corpus.windows("test", seq, args.eval_windows)
    windows = corpus.windows("train", seq, n_calib)[0]
    calib = [windows[i:i + 8] for i in range(0, n_calib, 8)]
    test = [(x[i:i + 16], y[i:i + 16], m[i:i + 16]) for i in range(0, len(x), 16)]
    verbs = {
        "prune wanda 50%": lambda mod: tfc.prune(mod, method="wanda", sparsity=0.5,
                                                  data=calib),
        "quantize rtn int8": lambda mod: tfc.quantize(mod, verbose=0),
        "quantize gptq int4 g32": lambda mod: tfc.quantize(
            mod, method="gptq", bits=4, granularity="group", group_size=32,
            calibration=calib, verbose=0),
        "factorize svd-llm 0.6": lambda mod: tfc.factorize(
            mod, method="svd-llm", target_ratio=0.6, calibration=calib, verbose=False),
    }
    rows, data = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("GPT2CausalLM", "LlamaCausalLM", "GemmaCausalLM"):
            model = build(kind, corpus.vocab_size, seq, hidden)
            train = corpus.dataset("train", seq, 16).map(
                lambda a, b, c: ({"token_ids": a, "padding_mask": keras.ops.ones_like(a)}, b, c))
            train_lm(model, train, args.steps, verbose=0)
            base = tfc.evaluate(model, test, seq_len=seq, batch_sizes=())
            float_ppl = base.quality["perplexity"]
            model.save(Path(tmp) / "float.keras")
            float_bytes = (Path(tmp) / "float.keras").stat().st_size
            rows.append(f"| {kind} | float | {float_ppl:.3f} | 1.000 | {float_bytes:,} | - |")
            for verb, fn in verbs.items():
                small = fn(model)
                path = Path(tmp) / "small.keras"
                small.save(path)
                again = keras.models.load_model(path)
                exact = bool(np.array_equal(np.asarray(again(model_inputs(again, x[:2]))),
                                            np.asarray(small(model_inputs(small, x[:2])))))
                ppl = tfc.evaluate(again, test, seq_len=seq, batch_sizes=()).quality[
                    "perplexity"]
                size = path.stat().st_size
                data[f"{kind} / {verb}"] = {"perplexity": ppl, "float_perplexity": float_ppl,
                                            "ratio": ppl / float_ppl, "bytes": size,
                                            "reload_exact": exact}
                rows.append(f"| {kind} | {verb} | {ppl:.3f} | {ppl / float_ppl:.3f} | "
                            f"{size:,} | {'yes' if exact else 'NO'} |")
                print(rows[-1], flush=True)
    table = "\n".join([
        f"Tiny KerasHub models (2 layers, d={hidden}, vocab {corpus.vocab_size}) trained "
        f"{args.steps} steps on Austen; perplexity on {len(x)} test windows of {seq}.",
        "",
        "| model | compression | perplexity | ratio | .keras bytes | reload exact |",
        "|---|---|---|---|---|---|", *rows])
    write_results("any_model", table, data, args)


if __name__ == "__main__":
    main()
