"""Run a recipe: load the model and data, run each stage, checkpoint it, write the report.

The run folder (``output``) holds ``recipe.yaml`` (the recipe as run, defaults filled in),
``stages/NN-<stage>/`` (``model.keras`` of a stage that makes a model, and ``record.json``:
its config hash, time, notes and measurements), ``exports/`` (``.tflite`` files and the
tokenizer; on-device bundle folders with their ``.litertlm``), ``report.md``, ``report.json``
and ``quality_vs_size.png``. Running the same recipe again resumes after the last finished
stage whose config (and every earlier one) and input files (their contents) are unchanged;
``fresh=True`` (``--fresh``) starts over.

Example:
    >>> run = tfcompress.run("recipes/my_model.yaml")
    >>> print(run.out / "report.md")
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from tfcompress.core.files import atomic_path, write_atomic
from tfcompress.core.progress import print_msg
from tfcompress.errors import TfcompressError
from tfcompress.recipes.bundles import BUNDLE_KIND
from tfcompress.recipes.schema import MAKES_MODEL, validate
from tfcompress.recipes.stages import STAGES, StageResult, check_layer_choices

LATENCY_REPEATS = 5


def _hash(previous: str, part: dict) -> str:
    text = json.dumps(part, sort_keys=True, default=str)
    return hashlib.sha256((previous + text).encode()).hexdigest()[:16]


class Run:
    """One recipe being run: its data, the models made so far (loaded from their checkpoints
    when needed), their reports, notes, files and samples."""

    def __init__(self, recipe: dict, verbose: int = 1):
        self.recipe = recipe
        self.out = Path(recipe["output"])
        self.data = recipe["data"]
        self.samples = recipe["samples"]
        self.seed = int(recipe["seed"])
        # the tf.distribute strategy the training stages run under (None: one device)
        self.strategy = None
        self.verbose = verbose
        self.latency_repeats = LATENCY_REPEATS
        self.models: dict = {}
        self.reports: list = []
        self.notes: list[str] = []
        self.files: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.timings: list[dict] = []
        self.source = recipe["model"]["name"]
        self.corpus = None
        self.tokenizer = None
        self._windows: dict = {}

    # --- data -----------------------------------------------------------------------------
    def train_data(self):
        """Repeating shuffled ``(inputs, targets, mask)`` batches of the train split."""
        d = self.data
        return self.corpus.dataset("train", d["seq_len"], d["batch_size"], repeat=True,
                                   seed=self.seed)

    def eval_data(self) -> list:
        """The first ``eval_windows`` test windows, one tuple per batch."""
        if "eval" not in self._windows:
            d = self.data
            x, y, m = self.corpus.windows("test", d["seq_len"], d["eval_windows"])
            b = d["batch_size"]
            self._windows["eval"] = [(x[i:i + b], y[i:i + b], m[i:i + b])
                                     for i in range(0, len(x), b)]
        return self._windows["eval"]

    def calibration(self) -> np.ndarray:
        """``calibration_windows`` train windows drawn with the recipe's seed (no test text)."""
        if "calibration" not in self._windows:
            x, _, _ = self.corpus.windows("train", self.data["seq_len"])
            n = min(self.data["calibration_windows"], len(x))
            rng = np.random.default_rng(self.seed)
            self._windows["calibration"] = x[rng.choice(len(x), n, replace=False)]
        return self._windows["calibration"]

    # --- models ---------------------------------------------------------------------------
    def model(self, name: str):
        """The model called ``name``, loaded from its checkpoint on first use."""
        value = self.models[name]
        if isinstance(value, str | Path):
            from tfcompress.recipes.sources import load_keras

            value = self.models[name] = load_keras(value)
        return value

    def measure(self, name: str, model=None):
        """Evaluate ``name`` on the held-out windows; replaces its earlier report."""
        from tfcompress.evaluate import evaluate

        if self.verbose:
            print_msg(f"measuring {name} on {self.data['eval_windows']} windows of "
                      f"{self.data['seq_len']} tokens")
        report = evaluate(model if model is not None else self.model(name), self.eval_data(),
                          name=name, seq_len=self.data["seq_len"], batch_sizes=(1,),
                          repeats=self.latency_repeats)
        self.reports = [r for r in self.reports if r.name != name] + [report]
        return report

    # --- report ---------------------------------------------------------------------------
    def write_report(self) -> Path:
        """``report.md``, ``report.json`` and ``quality_vs_size.png`` from what is done."""
        from tfcompress.evaluate import compare, plot_quality_vs_size, ratios

        self.out.mkdir(parents=True, exist_ok=True)
        base = next((r for r in self.reports if r.name == self.source), None)
        lines = [f"# {self.recipe['name']}", ""]
        if self.reports:
            plot_quality_vs_size(self.reports, self.out / "quality_vs_size.png")
            lines += [compare(self.reports, self.source if base else None), "",
                      "![quality vs size](quality_vs_size.png)", ""]
        shipped = [r for r in self.reports if r.kind in ("tflite", BUNDLE_KIND)]
        if base is not None and shipped:
            lines += ["## Exported models against the original", ""]
            for r in shipped:
                k = ratios(r, base)
                lines.append(f"- `{r.name}`: {_x(k['size_ratio'])} the bytes of `{base.name}`, "
                             f"perplexity {_x(k.get('perplexity_ratio'))} its perplexity.")
            lines.append("")
        lines += bundle_table([r for r in self.reports if r.kind == BUNDLE_KIND], base)
        if self.texts:
            lines += ["## Samples (greedy, same prompt)", "", "| model | text |", "|---|---|"]
            lines += [f"| {n} | {_cell(t)} |" for n, t in self.texts.items()]
            lines.append("")
        lines += ["## Stages", "", "| # | stage | input | output | seconds | |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {t['index']} | {t['stage']} | {t['input'] or ''} | {t['output'] or ''} "
                  f"| {t['seconds']:.1f} | {'resumed' if t['resumed'] else ''} |"
                  for t in self.timings]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        write_atomic(self.out / "report.md", "\n".join(lines) + "\n")
        write_atomic(self.out / "report.json", json.dumps({
            "recipe": _plain(self.recipe), "reports": [r.to_dict() for r in self.reports],
            "stages": self.timings, "samples": self.texts, "files": self.files,
            "notes": self.notes}, indent=2, default=str))
        return self.out / "report.md"


def bundle_table(bundles: list, base) -> list[str]:
    """Markdown lines: each on-device bundle's size, perplexity (and its ratio to ``base``,
    the source model, on the same held-out tokens) and tokens/s from `LLMRunner`."""
    if not bundles:
        return []
    lines = ["## On-device bundles (LLMRunner, this machine's CPU)", "",
             "| bundle | mode | .tflite MB | perplexity | vs source | prefill tokens/s "
             "| decode tokens/s |", "|---|---|---|---|---|---|---|"]
    for r in bundles:
        ppl = r.quality.get("perplexity")
        ratio = None if base is None or ppl is None else ppl / base.quality["perplexity"]
        lines.append(f"| `{Path(r.extra['bundle']).name}` | {r.extra['mode']} "
                     f"| {r.bytes / 1e6:.1f} | {ppl:.3f} | {_x(ratio)} "
                     f"| {r.extra['prefill_tokens_per_s']:.0f} "
                     f"| {r.extra['decode_tokens_per_s']:.1f} |")
    return [*lines, ""]


def _x(value) -> str:
    return "–" if value is None else f"{value:.3f}×"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _plain(recipe: dict) -> dict:
    """The recipe with a live model object replaced by its description (class, name, size:
    what a re-run compares to resume)."""
    model = {k: v for k, v in recipe["model"].items() if k != "object"}
    if "object" in recipe["model"]:
        obj = recipe["model"]["object"]
        model["object"] = f"<{type(obj).__name__} {obj.name!r}, {obj.count_params()} params>"
    return {**recipe, "model": model}


def load_recipe(recipe) -> dict:
    """A validated recipe from a dict, a ``.yaml``/``.yml``/``.json`` path or YAML text."""
    if isinstance(recipe, dict):
        return validate(recipe)
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise TfcompressError(f"recipe file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        base = path.parent
    elif isinstance(recipe, str) and "\n" in recipe:
        text, base = recipe, Path(".")
    else:
        raise TfcompressError(f"recipe must be a dict or a .yaml/.yml/.json path, got {recipe!r}")
    return validate(parse(text, str(path)), base)


def parse(text: str, where: str = "recipe") -> dict:
    """YAML (JSON is YAML too) to a dict, a syntax error as a `TfcompressError`."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TfcompressError(f"{where} is not valid YAML/JSON: {err}") from err
    if not isinstance(value, dict):
        raise TfcompressError(f"{where} must hold a mapping (model, data, stages, output), "
                              f"got {type(value).__name__}")
    return value


def load_source(run: Run) -> None:
    """The recipe's model, tokenizer and corpus; a built-in preset is trained (and cached)."""
    from tfcompress.recipes.sources import check_vocab, choose_tokenizer, load_model, load_text

    spec = run.recipe["model"]
    if "preset" in spec:
        run.tokenizer = choose_tokenizer(run.data, None)
        run.corpus = load_text(run.data, run.tokenizer)
        run.tokenizer = run.corpus.tokenizer
        run.models[run.source] = train_preset(run, spec)
        return
    where = [spec[k] for k in ("keras", "kerashub", "gguf", "safetensors") if k in spec]
    _say(run, f"loading {where[0] if where else run.source}")
    model, own = load_model(spec)
    run.tokenizer = choose_tokenizer(run.data, own)
    run.corpus = load_text(run.data, run.tokenizer)
    run.tokenizer = run.corpus.tokenizer
    check_vocab(model, run.corpus)
    run.models[run.source] = model


def train_preset(run: Run, spec: dict):
    """A `build_gpt` preset trained on the run's data, loaded from the cache when the same
    settings were trained before (``$TFCOMPRESS_CACHE`` or ``~/.cache/tfcompress``)."""
    import keras

    from tfcompress.models import build_gpt
    from tfcompress.models.training import cache_dir, cache_key, train_lm

    d = run.data
    corpus = d.get("corpus") or d.get("tfds") or d.get("text")
    key = cache_key(preset=spec["preset"], corpus=corpus, seq_len=d["seq_len"],
                    vocab=run.corpus.vocab_size, steps=spec["train_steps"],
                    batch=d["batch_size"], seed=run.seed)
    path = cache_dir() / f"teacher-{key}.keras"
    if path.is_file():
        run.notes.append(f"`{run.source}` ({spec['preset']}) loaded from the cache `{path}`.")
        return keras.models.load_model(path)
    keras.utils.set_random_seed(run.seed)
    model = build_gpt(spec["preset"], vocab_size=run.corpus.vocab_size, seq_len=d["seq_len"],
                      name=run.source)
    _say(run, f"training {spec['preset']!r} ({model.count_params():,} parameters) for "
         f"{spec['train_steps']} steps")
    train_lm(model, run.train_data(), spec["train_steps"],
             learning_rate=spec.get("learning_rate", 1e-3))
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    run.notes.append(f"`{run.source}` ({spec['preset']}) trained {spec['train_steps']} steps; "
                     f"cached at `{path}`.")
    return model


def _restore(run: Run, record: dict, folder: Path) -> None:
    from tfcompress.evaluate import Report

    if record["output"]:
        run.models[record["output"]] = folder / "model.keras"
    run.reports = [r for r in run.reports if r.name not in {x["name"] for x in record[
        "reports"]}] + [Report(**r) for r in record["reports"]]
    run.notes += record["notes"]
    run.files.update(record["files"])
    run.texts.update(record["samples"])


def _record(run: Run, folder: Path, record: dict, result: StageResult, reports: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if result.model is not None:
        with atomic_path(folder / "model.keras") as tmp:
            result.model.save(tmp)
    record.update(notes=result.notes, files=result.files, samples=result.samples,
                  reports=[r.to_dict() for r in reports])
    write_atomic(folder / "record.json", json.dumps(record, indent=2, default=str))


def _sample(run: Run, name: str) -> str:
    from tfcompress.export import generate_text

    return generate_text(run.model(name), run.tokenizer, run.samples["prompt"],
                         run.samples["tokens"], seq_len=run.data["seq_len"])


def run_recipe(recipe, *, quick: bool = False, verbose: int = 1,
               fresh: bool = False) -> Run:
    """Validate ``recipe`` (dict or file), then run it, resuming finished stages; returns the
    `Run` (``run.out`` is the folder, ``run.reports`` the measurements).

    A stage resumes when its settings, every earlier stage's and the content of every input
    file (model, tokenizer, text: `input_digests`) are unchanged; otherwise it runs again and
    a line says why. ``fresh`` runs every stage again. ``quick`` shrinks every size
    (`quick_sizes`) for a fast check of a recipe end to end.

    Example:
        >>> run = run_recipe("examples/smollm2_int4_phone.yaml")
    """
    import yaml

    from tfcompress.recipes.inputs import input_digests

    recipe = load_recipe(recipe)
    if quick:
        recipe = quick_sizes(recipe)
    run = Run(recipe, verbose)
    if recipe["strategy"] != "default":  # before any TensorFlow work: multi_worker needs it
        # imported here: core.distribute loads TensorFlow, which `--help` must not wait for
        from tfcompress.core.distribute import make_strategy

        run.strategy = make_strategy(recipe["strategy"])
        replicas = run.strategy.num_replicas_in_sync
        _say(run, f"training stages under {type(run.strategy).__name__} ({replicas} "
                  f"replica{'s' if replicas > 1 else ''})")
    run.out.mkdir(parents=True, exist_ok=True)
    write_atomic(run.out / "recipe.yaml", yaml.safe_dump(_plain(recipe), sort_keys=False))
    stages = recipe["stages"]
    total = len(stages) + 1
    inputs = input_digests(recipe)
    digest = _hash("", {**{k: _plain(recipe)[k] for k in ("model", "data", "seed")},
                        "inputs": inputs})
    rerun = _run_source(run, digest, inputs, fresh)
    for i, st in enumerate(stages, start=1):
        digest = _hash(digest, st)
        folder = run.out / "stages" / f"{i:02d}-{st['stage']}"
        output = st.get("name") if st["stage"] in MAKES_MODEL else None
        old = _old_record(folder, fresh)
        why = _rerun_reason(old, digest, fresh, earlier=rerun)
        if why is None and output is not None and not (folder / "model.keras").is_file():
            why = "its saved model is missing"
        arrow = f"{st['input']} -> {output}" if output else st["input"]
        if why is None:
            _say(run, f"[{i}/{total - 1}] {st['stage']} ({arrow}): finished before, resumed")
            _restore(run, old, folder)
            run.timings.append({**{k: old[k] for k in ("index", "stage", "input", "output")},
                                "seconds": old["seconds"], "resumed": True})
            continue
        rerun = True
        _say(run, f"[{i}/{total - 1}] {st['stage']} ({arrow})"
                  + (f": runs again, {why}" if why else ""))
        seconds = _run_stage(run, i, st, digest, folder, output)
        _say(run, f"[{i}/{total - 1}] {st['stage']} done in {seconds:.1f} s")
    path = run.write_report()
    _say(run, f"report written to {path}")
    return run


def _run_source(run: Run, digest: str, inputs: dict, fresh: bool) -> bool:
    """Stage 0: load the source model, then measure it, or restore its record when nothing
    it depends on changed; whether it ran again (then every later stage runs again too)."""
    stages = run.recipe["stages"]
    total = len(stages) + 1
    source_folder = run.out / "stages" / "00-source"
    start = time.perf_counter()
    _say(run, f"[0/{total - 1}] source: {run.source}")
    load_source(run)
    check_layer_choices(stages, run.source, run.model(run.source))
    old = _old_record(source_folder, fresh)
    why = _rerun_reason(old, digest, fresh, earlier=False, inputs=inputs)
    if why is None:
        _restore(run, {**old, "output": None}, source_folder)
    else:
        if why:
            _say(run, f"[0/{total - 1}] source measured again: {why}")
        report = run.measure(run.source)
        texts = {run.source: _sample(run, run.source)}
        _record(run, source_folder, {"index": 0, "stage": "source", "hash": digest,
                                     "inputs": inputs, "input": None, "output": None},
                StageResult(samples=texts), [report])
        run.texts.update(texts)
    rerun = why is not None  # once a stage runs again, later records are stale
    run.timings.append({"index": 0, "stage": "source", "input": None, "output": run.source,
                        "seconds": time.perf_counter() - start, "resumed": not rerun})
    return rerun


def _run_stage(run: Run, i: int, st: dict, digest: str, folder: Path, output: str | None
               ) -> float:
    """Run stage ``i`` and record it: its model (measured), reports, notes, files, samples
    and timing; returns its seconds."""
    start = time.perf_counter()
    result = STAGES[st["stage"]](run, st)
    reports = list(result.reports)
    if result.model is not None:
        run.models[output] = result.model
        reports.append(run.measure(output))
    for report in result.reports:  # measure() has already filed the model's own report
        run.reports = [r for r in run.reports if r.name != report.name] + [report]
    run.notes += result.notes
    run.files.update(result.files)
    run.texts.update(result.samples)
    seconds = time.perf_counter() - start
    record = {"index": i, "stage": st["stage"], "hash": digest, "input": st["input"],
              "output": output, "seconds": seconds}
    _record(run, folder, dict(record), result, reports)
    run.timings.append({**{k: record[k] for k in ("index", "stage", "input", "output")},
                        "seconds": seconds, "resumed": False})
    return seconds


def _old_record(folder: Path, fresh: bool) -> dict | None:
    path = folder / "record.json"
    return None if fresh or not path.is_file() else json.loads(path.read_text())


def _rerun_reason(old: dict | None, digest: str, fresh: bool, earlier: bool,
                  inputs: dict | None = None) -> str | None:
    """None when a stage's record still holds; else why it runs again ('' for a first run)."""
    from tfcompress.recipes.inputs import changed_inputs

    if fresh:
        return "--fresh (fresh=True) given"
    if old is None:
        return ""
    if earlier:
        return "an earlier stage ran again"
    if old["hash"] == digest:
        return None
    changed = changed_inputs(old.get("inputs"), inputs) if inputs is not None else []
    if changed:
        return f"input file changed since the last run: {', '.join(changed)}"
    return "its settings (or an earlier stage's) changed"


def _say(run: Run, text: str) -> None:
    if run.verbose:
        print_msg(text)


def toy_source(recipe: dict) -> dict:
    """A parsed (not yet validated) ``recipe`` whose model is a tiny built-in GPT trained a
    few steps on byte tokens of the same text, under the same name: its stages run in
    seconds without the real checkpoint (``python -m tfcompress demo --quick``).

    Example:
        >>> toy_source(parse(example("smollm2_phone").read_text()))["model"]
        {'preset': 'test-tiny', 'train_steps': 20, 'name': 'smollm2'}
    """
    toy = copy.deepcopy(recipe)
    name = (recipe.get("model") or {}).get("name", "base")
    toy["model"] = {"preset": "test-tiny", "train_steps": 20, "name": name}
    toy["data"] = {**(recipe.get("data") or {}), "tokenizer": "byte"}
    return toy


def quick_sizes(recipe: dict) -> dict:
    """The recipe at toy sizes: a ``test-tiny`` preset, 32-token windows, a few steps per
    stage, its own output folder (``<output>-quick``)."""
    small = json.loads(json.dumps(_plain(recipe)))
    if "object" in recipe["model"]:
        small["model"]["object"] = recipe["model"]["object"]
    model = small["model"]
    if "preset" in model:
        model.update(preset="test-tiny", train_steps=min(model["train_steps"], 20))
    small["data"].update(seq_len=32, batch_size=8, eval_windows=16, calibration_windows=4,
                         vocab_size=min(small["data"]["vocab_size"], 300))
    for st in small["stages"]:
        for key, cap in (("steps", 10), ("finetune_steps", 5)):
            if key in st:
                st[key] = min(st[key], cap)
        if "llm" in st:  # a cache within the toy's 32 positions
            st["llm"].update(prefill_lengths=[8], cache_length=32)
        if "preset" in st.get("student", {}):
            st["student"]["preset"] = "test-tiny"
    small["samples"]["tokens"] = min(small["samples"]["tokens"], 16)
    small["output"] = f"{small['output']}-quick"
    return small


__all__ = ["Run", "load_recipe", "parse", "quick_sizes", "run_recipe", "toy_source",
           "train_preset"]
