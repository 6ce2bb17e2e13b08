"""A tf.keras transformer through TF-MOT quantization-aware training to an int8 ``.tflite``.

The user's path for a Keras 2 model: train it (float), `tfmot_quantize` (Dense layers get
fake quantization; MultiHeadAttention, LayerNormalization and the ``tf.range`` / residual
TFOpLambda layers stay float), fine-tune with QAT, then `export_tflite(..., "int8")`: fully
integer with a representative dataset (the float layers calibrated), or from the QAT ranges
alone (layers without fake quantization stay float). Perplexity of each file against the
Keras QAT model on held-out Austen windows, and next-token agreement.

Run: ``python -m benchmarks.tfmot_export [--steps 300] [--qat-steps 100] [--quick]``
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import tfcompress as tfc
from benchmarks._common import bench_parser, parse_args, write_results
from tfcompress.errors import VerificationError
from tfcompress.quantize import tfmot_quantize

SEQ, WIDTH, LAYERS = 64, 64, 2


def fit(model, data, steps: int, learning_rate: float) -> None:
    import tf_keras as K

    model.compile(K.optimizers.Adam(learning_rate),
                  K.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)


def main(argv: list[str] | None = None) -> None:
    from tests.llm_checkpoints import tf_keras_transformer

    parser = bench_parser("tfmot_export", __doc__)
    parser.add_argument("--steps", type=int, default=300, help="float training steps")
    parser.add_argument("--qat-steps", type=int, default=100, help="QAT fine-tuning steps")
    parser.add_argument("--eval-windows", type=int, default=64)
    args = parse_args(parser, argv)
    if args.quick:
        args.steps, args.qat_steps, args.eval_windows = 5, 5, 16
    corpus = tfc.data.load_corpus("austen")
    train = corpus.dataset("train", SEQ, 32, repeat=True)
    x, y, m = corpus.windows("test", SEQ, args.eval_windows)
    test = [(x[i:i + 16], y[i:i + 16], m[i:i + 16]) for i in range(0, len(x), 16)]
    calibration = corpus.windows("train", SEQ, 32)[0]

    model = tf_keras_transformer(corpus.vocab_size, SEQ, WIDTH, LAYERS, heads=4)
    fit(model, train, args.steps, 3e-3)
    float_ppl = tfc.evaluate(model, test, seq_len=SEQ, batch_sizes=()).quality["perplexity"]
    qat = tfmot_quantize(model)
    fit(qat, train, args.qat_steps, 5e-4)
    qat_ppl = tfc.evaluate(qat, test, seq_len=SEQ, batch_sizes=()).quality["perplexity"]
    rows = [f"| float tf.keras model (Keras) | {float_ppl:.3f} | - | - | - | - |",
            f"| TF-MOT QAT model (Keras) | {qat_ppl:.3f} | 1.000 | - | - | - |"]
    data = {"float_perplexity": float_ppl, "qat_perplexity": qat_ppl,
            "skipped": qat.tfmot_skipped}
    with tempfile.TemporaryDirectory() as tmp:
        for label, rep in (("int8 .tflite, representative data", calibration),
                           ("int8 .tflite, QAT ranges only", None)):
            try:
                r = tfc.export_tflite(qat, Path(tmp) / "m.tflite", "int8", SEQ,
                                      representative_data=rep, eval_data=test, verbose=False)
                row = {"verification": "passed", "perplexity": r.perplexity,
                       "agreement": r.agreement, "bytes": r.bytes}
                figures = (f"{r.perplexity:.3f} | {r.perplexity / qat_ppl:.3f} | "
                           f"{r.agreement:.1%} | {r.bytes:,}")
            except VerificationError as err:
                row = {"verification": f"failed: {err}"}
                figures = "- | - | - | -"
            data[label] = row
            rows.append(f"| {label} | {figures} | {row['verification']} |")
            print(rows[-1], flush=True)
    table = "\n".join([
        f"tf.keras transformer ({LAYERS} blocks, d={WIDTH}, causal MultiHeadAttention, "
        f"vocab {corpus.vocab_size}) trained {args.steps} steps on Austen, TF-MOT QAT "
        f"{args.qat_steps} steps; perplexity on {len(x)} test windows of {SEQ}. Kept float "
        f"by TF-MOT: {', '.join(sorted(qat.tfmot_skipped))}.",
        "",
        "| model | perplexity | ratio to the QAT model | next-token agreement with it | bytes "
        "| verification |",
        "|---|---|---|---|---|---|", *rows])
    write_results("tfmot_export", table, data, args)


if __name__ == "__main__":
    main()
