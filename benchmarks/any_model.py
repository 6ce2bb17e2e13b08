"""Compress KerasHub CausalLMs used directly (dict inputs): perplexity ratio per verb.

Small random GPT2CausalLM / LlamaCausalLM / GemmaCausalLM configs (presets cannot be
downloaded here) are trained briefly on the bundled Austen corpus, then pruned (Wanda 50 %),
quantized (RTN int8, GPTQ int4 g32) and factorized (SVD-LLM, 60 % of the parameters), each
on a copy. Every compressed model is saved and reloaded (exact logits checked) and measured
on held-out windows: perplexity relative to its float model, and ``.keras`` size.

Run: ``python -m benchmarks.any_model [--steps 150] [--quick]`` (``--quick``: 5 steps, 16 windows)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np

import tfcompress as tfc
from benchmarks._common import bench_parser, parse_args, write_results
from tfcompress.core.signature import model_inputs
from tfcompress.models.training import train_lm

SEQ = 64


def build(kind: str, vocab: int):
    from tests.llm_checkpoints import tiny_causal_lm

    keras.utils.set_random_seed(0)
    short = {"GPT2CausalLM": "gpt2", "LlamaCausalLM": "llama", "GemmaCausalLM": "gemma"}[kind]
    return tiny_causal_lm(short, vocab, SEQ, layers=2, hidden=64, heads=4, kv_heads=2,
                          head_dim=16)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("any_model", __doc__)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-windows", type=int, default=64)
    args = parse_args(parser, argv)
    if args.quick:
        args.steps, args.eval_windows = 5, 16
    corpus = tfc.data.load_corpus("austen")
    x, y, m = corpus.windows("test", SEQ, args.eval_windows)
    calib = list(corpus.windows("train", SEQ, 32)[0].reshape(4, 8, SEQ))
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
            model = build(kind, corpus.vocab_size)
            train = corpus.dataset("train", SEQ, 16).map(
                lambda a, b, c: ({"token_ids": a, "padding_mask": keras.ops.ones_like(a)}, b, c))
            train_lm(model, train, args.steps, verbose=0)
            base = tfc.evaluate(model, test, seq_len=SEQ, batch_sizes=())
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
                ppl = tfc.evaluate(again, test, seq_len=SEQ, batch_sizes=()).quality[
                    "perplexity"]
                size = path.stat().st_size
                data[f"{kind} / {verb}"] = {"perplexity": ppl, "float_perplexity": float_ppl,
                                            "ratio": ppl / float_ppl, "bytes": size,
                                            "reload_exact": exact}
                rows.append(f"| {kind} | {verb} | {ppl:.3f} | {ppl / float_ppl:.3f} | "
                            f"{size:,} | {'yes' if exact else 'NO'} |")
                print(rows[-1], flush=True)
    table = "\n".join([
        f"Tiny KerasHub models (2 layers, d=64, vocab {corpus.vocab_size}) trained "
        f"{args.steps} steps on Austen; perplexity on {len(x)} test windows of {SEQ}.",
        "",
        "| model | compression | perplexity | ratio | .keras bytes | reload exact |",
        "|---|---|---|---|---|---|", *rows])
    write_results("any_model", table, data, args)


if __name__ == "__main__":
    main()
