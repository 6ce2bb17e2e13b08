"""The stages a recipe can list, each a few lines on top of the public verbs.

A stage takes the `Run` (data, models made so far) and its settings (validated by
`tfcompress.recipes.schema`) and returns a `StageResult`: a new model and/or notes and files.
Measuring the new model, saving it and recording the stage is the runner's job.

Example:
    >>> STAGES["prune"](run, {"stage": "prune", "input": "base", "name": "base-pruned",
    ...                       "method": "sparsegpt", "sparsity": 0.5, "include": "block"})
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tfcompress.errors import TfcompressError, VerificationError
from tfcompress.recipes.bundles import llm_bundles
from tfcompress.recipes.schema import DEFAULT_LAYERS, TOLERANCES, method_class, stage_config
from tfcompress.recipes.stage_result import StageResult

StageFn = Callable[..., StageResult]
STAGES: dict[str, StageFn] = {}


def stage(name: str) -> Callable[[StageFn], StageFn]:
    """Register ``fn`` as the recipe stage ``name``."""

    def register(fn: StageFn) -> StageFn:
        STAGES[name] = fn
        return fn

    return register


def finetune(model, dataset, steps: int, learning_rate: float = 3e-4, verbose=2,
             strategy=None):
    """Train ``model`` for ``steps`` batches keeping its zero weights at zero (masks from the
    zeros it holds, then stripped); returns the plain model. Under a ``tf.distribute``
    ``strategy`` a copy made in its scope trains, and comes back with plain variables."""
    from tfcompress.core.distribute import strategy_copy, strategy_scope, worker_safe_fit
    from tfcompress.models.training import train_lm
    from tfcompress.prune import UpdatePruning, keep_zeros, strip_pruning

    if steps < 1:
        return model
    with strategy_scope(strategy):
        if strategy is not None:
            model = strategy_copy(model, strategy)
        sparse = keep_zeros(model)
        with worker_safe_fit(model):
            train_lm(model, dataset, steps, learning_rate=learning_rate, verbose=verbose,
                     callbacks=[UpdatePruning()] if sparse else None)
    return strategy_copy(strip_pruning(model), None)


def stage_labels_weight(st: dict):
    """A distill stage's labels weight for `Distiller`: ``labels_weight`` alone is constant,
    with ``labels_weight_end`` linear from one to the other; without ``labels_weight`` the
    default's start (or the whole default schedule)."""
    from tfcompress.distill.losses import DEFAULT_LABELS_WEIGHT, check_labels_weight

    if "labels_weight" not in st and "labels_weight_end" not in st:
        return DEFAULT_LABELS_WEIGHT
    start = st.get("labels_weight", check_labels_weight(DEFAULT_LABELS_WEIGHT)[0])
    return start if "labels_weight_end" not in st else (start, st["labels_weight_end"])


def distill_guard(run, steps: int):
    """A `KDGuard` on the run's training stream, scored on its valid split (``eval_windows``
    windows), checked after 1/4 and 1/2 of ``steps``."""
    from tfcompress.distill import KDGuard

    d = run.data
    x, y, m = run.corpus.windows("valid", d["seq_len"], d["eval_windows"])
    b = d["batch_size"]
    holdout = [(x[i:i + b], y[i:i + b], m[i:i + b]) for i in range(0, len(x), b)]
    return KDGuard(holdout, run.train_data(), every=max(steps // 4, 1), checks=2)


def options_text(distiller) -> str:
    """What a distill stage added to the logits loss (`DistillOptions`), for its note."""
    parts = []
    if distiller.on_policy:
        prompt = distiller.prompt_length
        parts.append(f"{distiller.on_policy:.0%} of batches continued by the student from "
                     + (f"{prompt} prompt tokens" if prompt else "the first half of each window")
                     + " (on-policy)")
    if distiller.feature_pairs:
        pairs = ", ".join(f"{s} -> {t}" for s, t in distiller.feature_pairs)
        parts.append(f"hidden states matched ({distiller.feature_loss}, weight "
                     f"{distiller.feature_weight:g}): {pairs}")
    return "Beside the logits: " + "; ".join(parts) + "."


def guard_text(guard) -> str:
    """What a distill stage's `KDGuard` saw, for its note."""
    checks = "; ".join(f"step {s}: KD {kd:.4f}, labels {lab:.4f}" for s, kd, lab in guard.history)
    if guard.fell_back is None:
        return f"Guard (held-out loss, distilled vs labels-only probe): {checks}; kept KD."
    return (f"Guard (held-out loss, distilled vs labels-only probe): {checks}; fell back to "
            f"labels only at step {guard.fell_back}.")


def method_config(st: dict):
    """A prune / quantize / factorize stage's method config (`method_class`): without
    ``include``, the layers of its role (``layers``: ``blocks`` takes the attention and MLP
    kernels of each repeated block, found from the graph; a model without blocks, all)."""
    config = stage_config(st)
    cls = method_class(st["stage"], config)
    config.pop("method", None)
    if "include" not in config:
        config["roles"] = st.get("layers", DEFAULT_LAYERS[st["stage"]])
    return cls.from_config(config)


def check_layer_choices(stages: list[dict], source: str, model) -> None:
    """Before the first stage: each prune / quantize / factorize stage working on ``model``'s
    layers (the source, or a model made from it without distillation) selects something:
    its ``include`` / ``exclude`` match a layer (else the closest names are listed)."""
    from tfcompress.core.roles import check_selection

    same_layers = {source}
    for i, st in enumerate(stages):
        if st["input"] not in same_layers:
            continue
        if st["stage"] in DEFAULT_LAYERS:
            where = f"stages[{i}].{st['stage']}"
            for key in ("include", "exclude"):
                check_selection(model, st.get(key), f"{where}.{key}")
        if st["stage"] != "distill" and "name" in st:
            same_layers.add(st["name"])


@stage("distill")
def distill_stage(run, st: dict) -> StageResult:
    """A student (`make_student`) trained from the input model with `Distiller`.

    ``labels_weight`` weighs the labels loss (a constant on its own); with
    ``labels_weight_end`` it goes linearly from one to the other over the steps:
    ``labels_weight: 0, labels_weight_end: 1`` learns the teacher's distributions first and
    the labels last (``alpha`` / ``alpha_end``: the deprecated names). Without either, the
    weight, ``temperature`` and ``divergence`` are `Distiller`'s own defaults. ``guard:
    true`` adds a `KDGuard` (a labels-only probe scored on the valid split, checked at 1/4
    and 1/2 of the steps) that falls back to labels when they beat distillation; the note
    says what it saw.

    The student may start from the teacher's blocks chosen by measured importance on the
    calibration windows (``select: importance``) or from an earlier, pruned model of the run
    (``student.model``). A student that starts with zero weights (blocks of a pruned model)
    keeps them at zero while it is distilled, as the finetune stage does.

    The keys of `DistillOptions` pass to `Distiller`: ``on_policy`` / ``prompt_length``
    (GKD: a share of batches continued by the student itself), ``features: true`` /
    ``feature_weight`` / ``feature_loss`` (a depth student's blocks matched to the teacher
    blocks they were copied from).
    """
    import keras

    from tfcompress.core.distribute import strategy_copy, strategy_scope
    from tfcompress.distill import Distiller, DistillOptions
    from tfcompress.distill.losses import (
        DEFAULT_DIVERGENCE,
        DEFAULT_TEMPERATURE,
        labels_weight_text,
    )
    from tfcompress.models.training import lm_optimizer
    from tfcompress.prune import UpdatePruning, keep_zeros, strip_pruning
    from tfcompress.recipes.students import choose_blocks, make_student

    teacher = run.model(st["input"])
    source_name = st["student"].get("model", st["input"])  # what the student starts from
    source = run.model(source_name)
    keras.utils.set_random_seed(run.seed)
    spec, scores = choose_blocks(source, st["student"], run.calibration())
    steps = st["steps"]
    weight = stage_labels_weight(st)
    with strategy_scope(run.strategy):  # student, teacher copy and optimizer in its scope
        student = make_student(source, spec, run.data["seq_len"], name=st["name"])
        if run.strategy is not None:
            teacher = strategy_copy(teacher, run.strategy)
        distiller = Distiller(teacher, student, labels_weight=weight,
                              temperature=st.get("temperature", DEFAULT_TEMPERATURE),
                              divergence=st.get("divergence", DEFAULT_DIVERGENCE),
                              **DistillOptions.from_stage(st).get_config())
        distiller.compile(optimizer=lm_optimizer(steps, st.get("learning_rate", 1e-3)))
        sparse = keep_zeros(student)
    callbacks = [UpdatePruning(target=student)] if sparse else []
    guard = distill_guard(run, steps) if st.get("guard") else None
    callbacks += [guard] if guard else []
    history = distiller.fit(run.train_data(), steps_per_epoch=steps, epochs=1, verbose=2,
                            shuffle=False,
                            callbacks=callbacks).history
    student = strategy_copy(strip_pruning(student), None)
    origin = student_origin(spec, source_name)
    weights = f" (labels weight {labels_weight_text(weight)})"
    notes = [f"Distilled `{st['name']}` ({student.count_params():,} params, from {origin}) from "
             f"`{st['input']}` in {steps} steps{weights}: "
             f"final soft loss "
             f"{history['soft_loss'][-1]:.3f}{', zeros kept' if sparse else ''}."]
    if distiller.on_policy or distiller.feature_pairs:
        notes.append(options_text(distiller))
    if guard is not None:
        notes.append(guard_text(guard))
    if scores is not None:
        notes.append(f"Block importance of `{source_name}` (1 - cosine of each block's input "
                     f"and output): {[round(v, 4) for v in scores]}; kept {spec['layers']}.")
    return StageResult(student, notes)


def student_origin(spec: dict, source_name: str) -> str:
    """Where a distilled student's weights came from, for the stage note."""
    origin = f"`{source_name}`"
    if "preset" in spec:
        return f"a new {spec['preset']!r} model"
    if "layers" in spec:
        return f"blocks {spec['layers']} of {origin}"
    if "depth" in spec:
        return f"evenly spaced blocks ({spec['depth']:.0%}) of {origin}"
    return origin


@stage("prune")
def prune_stage(run, st: dict) -> StageResult:
    """`prune` with the stage's settings from the calibration windows, then an optional
    masked fine-tune (``finetune_steps``)."""
    from tfcompress.prune import prune, sparsity_summary, strip_pruning

    model = run.model(st["input"])
    pruned = prune(model, method_config(st), calibration=run.calibration())
    pruned = finetune(pruned, run.train_data(), st.get("finetune_steps", 0),
                      strategy=run.strategy)
    strip_pruning(pruned)
    total = sparsity_summary(pruned)["total"]
    return StageResult(pruned, [
        f"Pruned `{st['input']}` ({stage_config(st)}): {total['sparsity']:.0%} of its kernels "
        f"zero, fine-tuned {st.get('finetune_steps', 0)} steps with the zeros kept."])


@stage("finetune")
def finetune_stage(run, st: dict) -> StageResult:
    """Next-token training of a copy of the input model; zeros stay zero."""
    from tfcompress.core import copy_model

    source = run.model(st["input"])  # under a strategy, finetune trains a copy of its own
    model = finetune(source if run.strategy else copy_model(source), run.train_data(),
                     st["steps"], st.get("learning_rate", 3e-4), strategy=run.strategy)
    return StageResult(model, [f"Fine-tuned `{st['input']}` for {st['steps']} steps."])


@stage("quantize")
def quantize_stage(run, st: dict) -> StageResult:
    """`quantize` with the stage's settings (GPTQ calibrated on the calibration windows)."""
    from tfcompress.quantize import quantize

    model = run.model(st["input"])
    model = quantize(model, method_config(st), calibration=run.calibration())
    return StageResult(model, [f"Quantized `{st['input']}` ({stage_config(st)})."])


@stage("factorize")
def factorize_stage(run, st: dict) -> StageResult:
    """`factorize` with the stage's settings, then an optional fine-tune (``finetune_steps``)."""
    from tfcompress.lowrank import factorize

    model = run.model(st["input"])
    model = factorize(model, method_config(st), calibration=run.calibration())
    plans = model.factorization
    before = sum(p.params_before for p in plans)
    after = sum(p.params_after for p in plans)
    model = finetune(model, run.train_data(), st.get("finetune_steps", 0))
    return StageResult(model, [
        f"Factorized `{st['input']}` ({stage_config(st)}): chosen kernels at "
        f"{after / max(before, 1):.0%} of their weights, fine-tuned "
        f"{st.get('finetune_steps', 0)} steps."])


@stage("evaluate")
def evaluate_stage(run, st: dict) -> StageResult:
    """Measure the listed models (default: the input) again and write the report so far."""
    names = st.get("models") or [st["input"]]
    unknown = [n for n in names if n not in run.models]
    if unknown:
        raise TfcompressError(f"evaluate.models: {unknown} are not models of this run "
                              f"(made so far: {list(run.models)})")
    reports = [run.measure(n) for n in names]
    run.write_report()
    return StageResult(reports=reports)


@stage("export")
def export_stage(run, st: dict) -> StageResult:
    """The input model as a verified ``.tflite``: each of ``modes`` in order until one passes
    verification on the held-out windows; measured, with a greedy sample from the file.
    With ``llm``, also a KV-cache bundle per mode (`tfcompress.recipes.bundles`)."""
    if "llm" in st:
        bundles = llm_bundles(run, st)
        if "mode" not in st and "modes" not in st:
            return bundles
        window = export_stage(run, {k: v for k, v in st.items() if k != "llm"})
        return StageResult(notes=bundles.notes + window.notes,
                           files={**bundles.files, **window.files},
                           reports=bundles.reports + window.reports,
                           samples={**bundles.samples, **window.samples})
    from tfcompress.evaluate import evaluate
    from tfcompress.evaluate.size import param_counts
    from tfcompress.export import MODES, export_tflite, generate_text
    from tfcompress.recipes.sources import write_tokenizer

    name, model = st["input"], run.model(st["input"])
    modes = st.get("modes") or [st["mode"]]
    tolerances = {k: st[k] for k in TOLERANCES if k in st}
    notes, relax = [], {}
    for mode in modes:
        path = run.out / "exports" / f"{name}.{mode}.tflite"
        rep = run.calibration() if MODES[mode].needs_representative else None
        try:
            result = export_tflite(model, path, mode=mode, seq_len=run.data["seq_len"],
                                   eval_data=run.eval_data(), calibration=rep,
                                   auxiliary_inputs=st.get("auxiliary_inputs", "fixed"),
                                   **tolerances)
            break
        except VerificationError as err:
            notes.append(f"{mode} export of `{name}` failed verification ({err}).")
            relax = err.relax
    else:
        raise VerificationError(f"no export of {name!r} passed verification: "
                                + " ".join(notes), relax)
    label = f"{name} ({mode} tflite)"
    report = evaluate(str(path), run.eval_data(), name=label, batch_sizes=(1,),
                      repeats=run.latency_repeats, params=param_counts(model)["params"])
    samples = run.samples
    text = generate_text(path, run.tokenizer, st.get("prompt", samples["prompt"]),
                         samples["tokens"])
    files = {f"{name}.{mode}.tflite": str(path)}
    tok = write_tokenizer(run.tokenizer, path.parent, path.stem)
    if tok is not None:
        files[tok.name] = str(tok)
    notes.append(
        f"Exported `{name}` to `{Path(path).name}` ({result.bytes:,} bytes): max |logit error| "
        f"{result.max_abs_error:.3g}, next-token agreement {result.agreement:.1%}, perplexity "
        f"{result.perplexity:.3f} vs Keras {result.keras_perplexity:.3f}.")
    return StageResult(notes=notes, files=files, reports=[report], samples={label: text})
