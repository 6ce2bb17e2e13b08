"""Command line: ``python -m tfcompress demo`` and ``python -m tfcompress evaluate FILE``."""

from __future__ import annotations

import argparse
import json

from tfcompress.errors import TfcompressError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tfcompress", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, compress, measure and export on the bundled corpus")
    demo.add_argument("--quick", action="store_true", help="tiny settings (seconds, for checks)")
    demo.add_argument("--run-dir", help="output folder (default runs/demo-<time>)")
    demo.add_argument("--stages", nargs="+", help="stages to run, in order")
    ev = sub.add_parser("evaluate", help="measure a .keras or .tflite model on Austen test text")
    ev.add_argument("model", help="path to a .keras or .tflite file")
    ev.add_argument("--seq-len", type=int, default=128)
    ev.add_argument("--windows", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except TfcompressError as err:  # bad input: one line, argparse's exit status
        parser.exit(2, f"tfcompress {args.command}: error: {err}\n")


def _run(args) -> int:
    from tfcompress import _backend  # noqa: F401

    if args.command == "demo":
        from tfcompress.pipeline import DemoSettings, run_demo

        settings = DemoSettings.quick() if args.quick else DemoSettings()
        run_demo(settings, args.run_dir, args.stages)
        return 0
    from tfcompress.core.saving import load_model
    from tfcompress.core.validation import check_input_file
    from tfcompress.data import load_corpus
    from tfcompress.evaluate import evaluate

    tflite = args.model.endswith(".tflite")
    model = check_input_file(args.model, "model", ".tflite") if tflite else load_model(args.model)
    x, y, m = load_corpus("austen").windows("test", args.seq_len, args.windows)
    batches = [(x[i : i + 32], y[i : i + 32], m[i : i + 32]) for i in range(0, len(x), 32)]
    print(json.dumps(evaluate(model, batches, seq_len=args.seq_len).to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
