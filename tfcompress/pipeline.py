"""The demo pipeline: stages that each add a model, a measurement or a file to one run.

Stages are registered by name with `stage`; a method's subpackage registers its own (e.g.
``distill``), and `DEMO_STAGES` fixes their order in ``make demo``.

Example:
    >>> run_demo(DemoSettings.quick(), run_dir="runs/quick")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfcompress.data import LMCorpus, load_corpus
from tfcompress.errors import TfcompressError


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; `quick` shrinks everything for tests and notebooks."""

    corpus: str = "austen"
    teacher_preset: str = "teacher"
    student_preset: str = "student"
    seq_len: int = 128
    batch_size: int = 32
    # sized so a first run (teacher trained, not cached) ends within 10 minutes on 2 cores
    teacher_steps: int = 400
    student_steps: int = 150
    finetune_steps: int = 50
    eval_windows: int = 128
    calibration_windows: int = 32
    latency_repeats: int = 10
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(teacher_preset="test-tiny", student_preset="test-tiny", seq_len=32,
                   batch_size=8, teacher_steps=20, student_steps=10, finetune_steps=5,
                   eval_windows=16, calibration_windows=4, latency_repeats=2)


@dataclass
class DemoContext:
    """What the stages share: data, the models made so far, their reports, notes."""

    settings: DemoSettings
    run_dir: Path
    corpus: LMCorpus
    models: dict = field(default_factory=dict)
    final: str = "teacher"
    reports: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def teacher(self):
        return self.models["teacher"]

    def train_data(self):
        s = self.settings
        return self.corpus.dataset("train", s.seq_len, s.batch_size, repeat=True, seed=s.seed)

    def eval_data(self, split: str = "test"):
        """A fixed slice of held-out windows as one tuple per batch."""
        s = self.settings
        x, y, m = self.corpus.windows(split, s.seq_len, s.eval_windows)
        b = s.batch_size
        return [(x[i : i + b], y[i : i + b], m[i : i + b]) for i in range(0, len(x), b)]

    def calibration(self) -> np.ndarray:
        """Training windows used by one-shot methods (no test text)."""
        x, _, _ = self.corpus.windows("train", self.settings.seq_len)
        rng = np.random.default_rng(self.settings.seed)
        return x[rng.choice(len(x), self.settings.calibration_windows, replace=False)]

    def measure(self, name: str, model=None) -> None:
        """Evaluate a model (default: the one called ``name``) and keep its report."""
        from tfcompress.evaluate import evaluate

        s = self.settings
        report = evaluate(model if model is not None else self.models[name], self.eval_data(),
                          name=name, seq_len=s.seq_len, batch_sizes=(1, s.batch_size),
                          repeats=s.latency_repeats)
        self.reports = [r for r in self.reports if r.name != name] + [report]


StageFn = Callable[[DemoContext], None]
STAGES: dict[str, StageFn] = {}


def stage(name: str) -> Callable[[StageFn], StageFn]:
    """Register a demo stage under ``name``."""

    def register(fn: StageFn) -> StageFn:
        STAGES[name] = fn
        return fn

    return register


@stage("teacher")
def train_teacher(ctx: DemoContext) -> None:
    """Train the teacher, or load it from the cache when the same settings ran before."""
    import keras

    from tfcompress.models import build_gpt
    from tfcompress.models.training import cache_dir, cache_key, train_lm

    s = ctx.settings
    key = cache_key(preset=s.teacher_preset, corpus=s.corpus, seq_len=s.seq_len,
                    vocab=ctx.corpus.vocab_size, steps=s.teacher_steps, batch=s.batch_size,
                    seed=s.seed)
    path = cache_dir() / f"teacher-{key}.keras"
    if path.is_file():
        print(f"teacher: loaded from cache {path}")
        ctx.models["teacher"] = keras.models.load_model(path)
        ctx.notes.append(f"Teacher loaded from cache `{path}`.")
        ctx.measure("teacher")
        return
    keras.utils.set_random_seed(s.seed)
    model = build_gpt(s.teacher_preset, vocab_size=ctx.corpus.vocab_size, seq_len=s.seq_len,
                      name="teacher")
    print(f"teacher: training {model.count_params():,} parameters for {s.teacher_steps} steps")
    train_lm(model, ctx.train_data(), s.teacher_steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    ctx.models["teacher"] = model
    ctx.notes.append(f"Teacher trained for {s.teacher_steps} steps; cached at `{path}`.")
    ctx.measure("teacher")


@stage("evaluate")
def evaluate_models(ctx: DemoContext) -> None:
    """Measure every model made so far that has no report yet."""
    done = {r.name for r in ctx.reports}
    for name in ctx.models:
        if name not in done:
            ctx.measure(name)


DEMO_STAGES: tuple[str, ...] = (
    "teacher", "distill", "prune", "quantize", "factorize", "evaluate", "export",
)
# Each method registers its own stage; imported on first use to keep `import tfcompress` light.
STAGE_MODULES = (
    "tfcompress.distill.stage",
    "tfcompress.prune.stage",
    "tfcompress.quantize.stage",
    "tfcompress.lowrank.stage",
    "tfcompress.export.stage",
)


def load_stages() -> dict[str, StageFn]:
    """Import every method's stage module so its stage is registered; returns `STAGES`."""
    import importlib

    for module in STAGE_MODULES:
        importlib.import_module(module)
    return STAGES


def run_demo(
    settings: DemoSettings | None = None,
    run_dir: str | Path | None = None,
    stages: tuple[str, ...] | None = None,
) -> DemoContext:
    """Run ``stages`` (default `DEMO_STAGES`) and write the report; returns the context."""
    settings = settings or DemoSettings()
    stages = DEMO_STAGES if stages is None else tuple(stages)
    load_stages()
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise TfcompressError(f"stages {unknown} are unknown: choose from {sorted(STAGES)}")
    run_dir = Path(run_dir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(settings, run_dir, load_corpus(settings.corpus))
    for name in stages:
        start = time.perf_counter()
        print(f"== stage {name}")
        STAGES[name](ctx)
        ctx.timings[name] = time.perf_counter() - start
    _write(ctx)
    return ctx


def _write(ctx: DemoContext) -> None:
    from tfcompress.evaluate import write_report

    timing = "\n".join(f"| {k} | {v:.1f} |" for k, v in ctx.timings.items())
    notes = "\n".join(f"- {n}" for n in ctx.notes)
    notes += f"\n\n| stage | seconds |\n|---|---|\n{timing}\n"
    if ctx.reports:
        path = write_report(ctx.reports, ctx.run_dir, baseline=ctx.reports[0].name,
                            title="tfcompress demo", notes=notes)
        print(f"report written to {path}")
    (ctx.run_dir / "settings.json").write_text(json.dumps(asdict(ctx.settings), indent=2))


__all__ = [
    "DEMO_STAGES", "STAGES", "DemoContext", "DemoSettings", "load_stages", "run_demo", "stage",
]
