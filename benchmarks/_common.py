"""The benchmark harness: arguments, the demo teacher and data, and writing results.

Every benchmark runs from the repository root as ``python -m benchmarks.<name>`` and takes
``--quick``: every row of its table at the sizes of `QUICK` (tiny models, a few steps, one
latency round), so the whole script runs in seconds (``make test`` runs every one that way);
its results go to ``benchmarks/results/quick/`` (git-ignored), never over the recorded ones.
The demo-teacher benchmarks use the demo's teacher preset trained a little longer than the
demo's 10-minute budget allows (`BENCH_SETTINGS`; trained once, then loaded from
``$TFCOMPRESS_CACHE``, default ``~/.cache/tfcompress``).

Each script prints a markdown table and writes ``<name>.json`` and ``<name>.md`` with the
command that made them, the commit and the script's hash (`benchmarks._provenance`), the date,
the machine, the load it ran under (measured) and the library versions. A run extends an
earlier result only through `merge_source` (a file under ``results/`` from the same commit).
``benchmarks/published.toml`` lists the commands of every recorded result
(`benchmarks._published`).

Example:
    >>> parser = bench_parser("distill", __doc__)
    >>> args = parse_args(parser, ["--quick"])
    >>> ctx = demo_context(args)
    >>> write_results("distill", "| a |", {"a": 1}, args)
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import tfcompress  # noqa: F401  (sets the Keras backend)
from benchmarks._provenance import LoadMonitor, describe_load, provenance
from tfcompress.core.files import write_atomic  # no half-written results file
from tfcompress.errors import TfcompressError
from tfcompress.recipes import Run, validate
from tfcompress.recipes.runner import load_source
from tfcompress.recipes.sources import choose_tokenizer, load_text

RESULTS = Path(__file__).parent / "results"
QUICK_RESULTS = RESULTS / "quick"


@dataclass(frozen=True)
class DemoSettings:
    """The demo's sizes (`tfcompress/recipes/examples/demo.yaml`); `quick` for checks.

    Under ``--quick`` the scripts size all their work from these: ``finetune_steps`` for every
    short training (QAT, distillation, any_model's models), ``eval_windows``/``seq_len`` for
    held-out text, ``latency_rounds``/``latency_repeats`` for every timing, and
    ``train_tokens`` cuts the train split the scripts read once the teacher is loaded (each
    training stream windows and shuffles the whole split; None keeps it whole).
    """

    corpus: str = "austen"
    teacher_preset: str = "teacher"
    student_preset: str = "student"
    seq_len: int = 128
    batch_size: int = 32
    teacher_steps: int = 400
    student_steps: int = 150
    finetune_steps: int = 50
    eval_windows: int = 128
    calibration_windows: int = 32
    latency_repeats: int = 10
    latency_rounds: int = 5
    group_size: int = 128
    train_tokens: int | None = None
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        # group 16: the test-tiny kernels have 32 rows
        return cls(teacher_preset="test-tiny", student_preset="test-tiny", seq_len=32,
                   batch_size=8, teacher_steps=10, student_steps=2, finetune_steps=2,
                   eval_windows=16, calibration_windows=4, latency_repeats=1,
                   latency_rounds=1, group_size=16, train_tokens=20_000)


# the sizes of every --quick run
QUICK = DemoSettings.quick()
# the settings every recorded result in results/ was measured with
BENCH_SETTINGS = DemoSettings(teacher_steps=500, student_steps=200, eval_windows=256)
VERSIONS = ("tensorflow", "keras", "numpy", "ai-edge-litert", "tf-keras",
            "tensorflow-model-optimization", "keras-hub")


class BenchContext(Run):
    """A recipe `Run` of the demo's teacher and data, with the benchmark's `DemoSettings`."""

    def __init__(self, settings: DemoSettings, run_dir: str | Path):
        s = settings
        super().__init__(validate({
            "model": {"preset": s.teacher_preset, "train_steps": s.teacher_steps,
                      "name": "teacher"},
            "data": {"corpus": s.corpus, "tokenizer": "byte", "seq_len": s.seq_len,
                     "batch_size": s.batch_size, "eval_windows": s.eval_windows,
                     "calibration_windows": s.calibration_windows},
            "stages": ["evaluate"], "output": str(run_dir), "seed": s.seed}))
        self.settings = settings
        self.latency_repeats = settings.latency_repeats
        self.run_dir = self.out

    @property
    def teacher(self):
        return self.model("teacher")


def bench_parser(script: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser for ``python -m benchmarks.<script>`` with ``--quick``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{script}",
                                     description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and steps, a smoke run of the whole script in seconds; "
                             f"results go to {QUICK_RESULTS.relative_to(RESULTS.parents[1])}/")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """``parser.parse_args`` that also keeps the command line (``args.command``), the
    commit and script hash (``args.provenance``) and starts measuring the load (``args.load``).

    ``--quick`` switches TensorFlow to eager execution for the rest of the process: tracing
    a tiny model's train step costs seconds, many times what its few steps cost eagerly
    (the library's own tests cover the traced paths).
    """
    load = LoadMonitor()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command = shlex.join([*parser.prog.split(), *argv])
    args.load, args.merged = load, []
    args.provenance = provenance(parser.prog.split(".")[-1])
    if args.quick:
        import tensorflow as tf

        tf.config.run_functions_eagerly(True)
    return args


def bench_settings(quick: bool) -> DemoSettings:
    """`BENCH_SETTINGS`, or `QUICK` under ``--quick``."""
    return QUICK if quick else BENCH_SETTINGS


def demo_context(args=None, settings: DemoSettings | None = None,
                 teacher: bool = True) -> BenchContext:
    """A `BenchContext` with the (cached) demo teacher loaded; ``teacher=False``: its corpus
    only (for runs that train students on labels alone, without waiting for a teacher)."""
    quick = bool(getattr(args, "quick", False))
    settings = settings or bench_settings(quick)
    run_dir = scratch_dir("bench-") if quick else Path("runs/bench")
    ctx = BenchContext(settings, run_dir)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    if teacher:
        load_source(ctx)
    else:
        ctx.corpus = load_text(ctx.data, choose_tokenizer(ctx.data, None))
        ctx.tokenizer = ctx.corpus.tokenizer
    if settings.train_tokens:
        ids = ctx.corpus.ids
        ctx.corpus = replace(ctx.corpus, ids={**ids, "train": ids["train"][:settings.train_tokens]})
    return ctx


def environment() -> dict:
    """Date, machine and library versions, stored with every result."""
    versions = {"python": platform.python_version()}
    for name in ("tfcompress", *VERSIONS):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                       f"{os.cpu_count()} cores",
            "versions": versions}


def results_dir(quick: bool) -> Path:
    return QUICK_RESULTS if quick else RESULTS


def scratch_dir(prefix: str) -> Path:
    """A temporary folder removed when the process exits (a benchmark's throwaway files)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def merge_source(path: str | Path, args) -> dict:
    """The results (``meta`` left out) of an earlier run that this one extends, recorded in
    this run's ``meta["merged"]``: only a file under ``results/`` (``results/quick/`` for
    ``--quick``) made on this run's commit, so one commit's code made every figure.

    Example:
        >>> old = merge_source("benchmarks/results/llm.json", args)
    """
    path = Path(path).resolve()
    folder = results_dir(args.quick).resolve()
    if path.parent != folder or not path.is_file():
        raise TfcompressError(f"merge: {str(path)!r} is not a results file in "
                              f"{folder}/; only those can be extended")
    data = json.loads(path.read_text())
    meta, commit = data.pop("meta", {}), args.provenance["commit"]
    if meta.get("commit") != commit or not commit:
        raise TfcompressError(f"merge: {path.name} was made on commit {meta.get('commit')!r}, "
                              f"this run is on {commit!r}: re-run its command "
                              f"({meta.get('command')!r}) on this commit")
    args.merged.append({"file": path.name, "command": meta.get("command"), "commit": commit})
    return data


def resume_source(name: str, args) -> dict:
    """The results so far of this command's earlier run on this commit, cut short before its
    end (saved with ``complete=False``), for this run to go on from; ``{}`` when there is
    none. That run (and any it resumed) goes into this run's ``meta["merged"]`` with its load.

    Example:
        >>> done = resume_source("distill", args)  # {} on a fresh start
    """
    path = results_dir(args.quick) / f"{name}.json"
    if not path.is_file() or not args.provenance["commit"] or args.provenance["dirty"]:
        return {}
    data = json.loads(path.read_text())
    meta = data.pop("meta", {})
    same = all(meta.get(k) == v for k, v in (("command", args.command),
                                             ("commit", args.provenance["commit"]),
                                             ("script_sha256", args.provenance["script_sha256"])))
    if not same or meta.get("complete", True):
        return {}
    args.merged += [*meta.get("merged", []), {"file": path.name, "command": meta["command"],
                                              "commit": meta["commit"], "load": meta.get("load"),
                                              "resumed": True}]
    return data


def write_results(name: str, table: str, data: dict, args, complete: bool = True) -> Path:
    """Print ``table`` and save it with ``data`` as ``<name>.json`` and ``<name>.md``
    (under ``results/quick/`` for a ``--quick`` run); ``complete=False``: a partial save,
    which the same command on the same commit resumes (`resume_source`)."""
    out = results_dir(args.quick)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": args.command, **args.provenance, **environment(),
            "load": args.load.snapshot(), "merged": args.merged, "complete": complete}
    write_atomic(out / f"{name}.json", json.dumps({**data, "meta": meta}, indent=2))
    made = f"commit {(meta['commit'] or 'not recorded')[:10]}; {describe_load(meta['load'])}"
    write_atomic(out / f"{name}.md", f"# {name}\n\n`{args.command}` ({made})\n\n{table}\n")
    print(table)
    print(f"results written to {out / (name + '.json')}")
    return out / f"{name}.json"
