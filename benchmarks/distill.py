"""Distillation benchmark: our Distiller vs training from scratch vs keras.distillation.

Same data stream, steps, seed, optimizer and student initialisation for every run. Prints
held-out perplexity of the teacher and of each student, the fraction of the teacher-scratch
gap each closes, and train-step times against the physical limit (teacher forward + student
train step, each measured alone). Step times are measured interleaved in one process, so
machine contention hits all of them alike.

Regimes where distillation is known to pay (``--regimes``), each KD vs labels only from the
same start, over seeds (mean and spread). Our KD anneals the weight of the labels loss from
0 to 1 (``--alpha 0 1``: the teacher's logits first, the labels last, so a student can end
better than a weak teacher); Keras's Distiller takes one fixed weight, the mean (0.5):

- ``init``: student = the teacher's most important half of its blocks (`block_importance`);
  logit KD (ours, and ``keras.distillation.Distiller``) vs the same init on labels.
- ``little``: a random-init student sees only 5 % of the training text, for many epochs.
- ``long``: a random-init student trained 5x longer than the baseline's 200 steps (our KD
  from a top-32 cache of the teacher, Keras's Distiller with the teacher online).
- ``smollm2``: SmolLM2-135M, half its blocks kept by measured importance (Minitron-style),
  labels-only vs logit KD after ``--smollm2-steps`` steps of 4 x 128 tokens.

Run: ``python -m benchmarks.distill --regimes init little long`` (merges its keys into
``results/distill.json``; ``--regimes baseline`` reruns the original 200-step comparison).
``--kinds`` trains only some of the students (``labels``, ``kd``, ``keras_kd``); each seed's
row keeps those measured before with the same settings, so ``--kinds labels`` (no teacher
needed) can run while the teacher trains and ``--kinds kd keras_kd`` after.
``--quick`` runs the baseline and every regime at tiny size (results in ``results/quick/``).
The teacher is cached in ``$TFCOMPRESS_CACHE``, default ``~/.cache/tfcompress``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from benchmarks._common import (
    QUICK,
    bench_parser,
    demo_context,
    merge_source,
    parse_args,
    results_dir,
    scratch_dir,
    write_results,
)
from tfcompress.distill import (
    Distiller,
    ParameterSchedule,
    block_importance,
    cache_teacher,
    load_teacher_cache,
    most_important,
    take_blocks,
)
from tfcompress.distill.losses import check_alpha
from tfcompress.evaluate import interleaved_latency, keras_forward, lm_quality
from tfcompress.models import build_gpt
from tfcompress.models.training import lm_loss, lm_optimizer, train_lm

ALPHA, TEMPERATURE, TOP_K = 0.5, 1.0, 32
OTHER_DIVERGENCES = ("reverse_kl", "jsd")


def accuracy():
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def fresh_student(ctx):
    keras.utils.set_random_seed(ctx.settings.seed)
    return build_gpt(ctx.settings.student_preset, vocab_size=ctx.corpus.vocab_size,
                     seq_len=ctx.settings.seq_len, name="student")


def fit_timed(model, data, steps):
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=2)
    return time.perf_counter() - start


def ours(ctx, teacher, data, steps, divergence):
    distiller = Distiller(teacher, fresh_student(ctx), alpha=ALPHA, temperature=TEMPERATURE,
                          divergence=divergence)
    distiller.compile(optimizer=lm_optimizer(steps), weighted_metrics=accuracy())
    return distiller, fit_timed(distiller, data, steps)


def keras_distiller(ctx, data, steps):
    from keras.distillation import Distiller as KerasDistiller
    from keras.distillation import LogitsDistillation

    # A KLDivergence instance: Keras 3.15's default loss="kl_divergence" resolves to the plain
    # function, misses LogitsDistillation's isinstance check and is applied to raw logits.
    soft = LogitsDistillation(TEMPERATURE, loss=keras.losses.KLDivergence())
    kd = KerasDistiller(ctx.teacher, fresh_student(ctx), soft, student_loss_weight=ALPHA)
    kd.compile(optimizer=lm_optimizer(steps), loss=lm_loss(), weighted_metrics=accuracy())
    return kd, fit_timed(kd, data, steps)


def baseline(ctx, args) -> tuple[str, dict]:
    """The original comparison: random-init student, 200 steps, our KD vs scratch vs Keras."""
    steps, repeats, s = args.steps, args.repeats, ctx.settings
    test = ctx.eval_data()

    def ppl(model):
        return lm_quality(keras_forward(model), test)["perplexity"]

    def stream():
        return ctx.train_data().take(steps)

    results, seconds = {"teacher": ppl(ctx.teacher)}, {}
    scratch = fresh_student(ctx)
    start = time.perf_counter()
    train_lm(scratch, ctx.train_data(), steps, verbose=2)
    seconds["scratch"] = time.perf_counter() - start
    results["scratch"] = ppl(scratch)

    online, seconds["kd_forward_kl"] = ours(ctx, ctx.teacher, ctx.train_data(), steps,
                                            "forward_kl")
    results["kd_forward_kl"] = ppl(online.student)

    tmp = scratch_dir("distill-bench-")
    start = time.perf_counter()
    full = cache_teacher(ctx.teacher, stream(), tmp / "full", top_k=ctx.corpus.vocab_size)
    seconds["cache_full_build"] = time.perf_counter() - start
    for name in OTHER_DIVERGENCES:  # the full cache gives these the online teacher's logits
        model, seconds[f"kd_{name}"] = ours(ctx, None, load_teacher_cache(full, s.batch_size,
                                                                          repeat=True),
                                            steps, name)
        results[f"kd_{name}"] = ppl(model.student)

    start = time.perf_counter()
    top = cache_teacher(ctx.teacher, stream(), tmp / "top", top_k=TOP_K)
    seconds["cache_top_build"] = time.perf_counter() - start
    (_, (values, indices)), _, _ = next(iter(load_teacher_cache(top, s.batch_size)))
    cached, seconds["kd_cached_top"] = ours(ctx, None, load_teacher_cache(top, s.batch_size,
                                                                          repeat=True),
                                            steps, "forward_kl")
    results["kd_cached_top"] = ppl(cached.student)

    keras_kd, seconds["keras_distiller"] = keras_distiller(ctx, ctx.train_data(), steps)
    results["keras_distiller"] = ppl(keras_kd.student)

    shutil.rmtree(tmp)
    x, y, m = next(iter(ctx.train_data()))
    teacher_fn = tf.function(lambda ids: ctx.teacher(ids, training=False))
    times = interleaved_latency({
        "teacher_forward": lambda: teacher_fn(x).numpy(),
        "student_step": lambda: scratch.train_on_batch(x, y, sample_weight=m),
        "ours_step": lambda: online.train_on_batch(x, y, sample_weight=m),
        "keras_step": lambda: keras_kd.train_on_batch(x, y, sample_weight=m),
        "cached_step": lambda: cached.train_on_batch((x, (values, indices)), y,
                                                     sample_weight=m),
    }, rounds=repeats, repeats=1)
    times = {name: t["median_ms"] for name, t in times.items()}

    teacher_ppl, scratch_ppl = results["teacher"], results["scratch"]

    def gap(p):
        return (scratch_ppl - p) / (scratch_ppl - teacher_ppl)

    best_other = min(OTHER_DIVERGENCES, key=lambda n: results[f"kd_{n}"])
    best = min(("forward_kl", best_other), key=lambda n: results[f"kd_{n}"])
    limit = times["teacher_forward"] + times["student_step"]
    rows = [("teacher", teacher_ppl, "", "")]
    for name in ("scratch", "kd_forward_kl", *(f"kd_{n}" for n in OTHER_DIVERGENCES),
                 "kd_cached_top", "keras_distiller"):
        rows.append((name, results[name], f"{gap(results[name]):.1%}", f"{seconds[name]:.0f}"))
    table = ["| model | held-out perplexity | gap closed | fit seconds |", "|---|---|---|---|"]
    table += [f"| {n} | {p:.3f} | {g} | {t} |" for n, p, g, t in rows]
    table += ["", "| step | median ms |", "|---|---|"]
    table += [f"| {n} | {v:.1f} |" for n, v in times.items()]
    table += [f"| limit (teacher forward + student step) | {limit:.1f} |"]
    data = {
        "gap_closed": gap(results[f"kd_{best}"]),
        "gap_closed_keras": gap(results["keras_distiller"]),
        "step_time_vs_limit": times["ours_step"] / limit,
        "keras_step_time_vs_limit": times["keras_step"] / limit,
        "cached_step_ratio": times["cached_step"] / times["ours_step"],
        "teacher_ppl": teacher_ppl,
        "scratch_ppl": scratch_ppl,
        "kd_ppl": results[f"kd_{best}"],
        "kd_divergence": best,
        "keras_kd_ppl": results["keras_distiller"],
        "cached_top_k_ppl": results["kd_cached_top"],
        "top_k": TOP_K,
        "perplexities": results,
        "fit_seconds": seconds,
        "step_ms": times,
        "steps": steps,
        "batch_size": s.batch_size,
        "seq_len": s.seq_len,
        "eval_windows": s.eval_windows,
        "alpha": ALPHA,
        "temperature": TEMPERATURE,
    }
    table += ["", "kd_reverse_kl and kd_jsd read a full-vocabulary cache (the exact teacher "
              "logits), so their fit seconds are not online times; kd_cached_top is forward KL "
              f"from a top-{TOP_K} cache. alpha {ALPHA}, T {TEMPERATURE}, {steps} steps."]
    summary = (f"\nKD ({best}) closes {data['gap_closed']:.1%} of the gap (Keras's Distiller "
               f"{data['gap_closed_keras']:.1%}); step {data['step_time_vs_limit']:.2f}x the "
               f"limit; cached step {data['cached_step_ratio']:.2f}x the online step.")
    return "\n".join(table) + summary, data



# --- regimes where distillation is known to pay ----------------------------------------------
# Labels-only students do not depend on these: a run that changes only them keeps those.
KD_SETTINGS = ("alpha", "temperature")


KINDS = ("labels", "kd", "keras_kd")  # labels only, our logit KD, keras.distillation
MIN_GAP = 0.02  # gap closed is reported only when labels-only trails the teacher by > 2 %


def train_three_ways(make_student, teacher, data, steps, lr, alpha, kd_data=None,
                     kinds=KINDS) -> dict:
    """Held-out-ready students: labels only, our logit KD, Keras's Distiller (same init/data),
    those of ``kinds`` only.

    ``alpha`` is ``(start, end)``: our weight on the hard loss goes linearly from ``start``
    to ``end`` over the steps (`ParameterSchedule`); Keras's Distiller, which takes one fixed
    weight, gets their mean, the same total weight on labels. ``kd_data`` (a teacher cache)
    replaces the online teacher for our KD when given.
    """
    from keras.distillation import Distiller as KerasDistiller
    from keras.distillation import LogitsDistillation

    out = {}
    if "labels" in kinds:
        labels = make_student()
        labels.compile(optimizer=lm_optimizer(steps, lr), loss=lm_loss())
        labels.fit(data(), steps_per_epoch=steps, epochs=1, verbose=0)
        out["labels"] = labels
    if "kd" in kinds:
        start, end = alpha
        ours = Distiller(None if kd_data else teacher, make_student(), alpha=start,
                         temperature=TEMPERATURE)
        ours.compile(optimizer=lm_optimizer(steps, lr))
        ours.fit(kd_data() if kd_data else data(), steps_per_epoch=steps, epochs=1, verbose=0,
                 callbacks=[ParameterSchedule("alpha", "linear", start, end)])
        out["kd"] = ours.student
    if "keras_kd" in kinds:
        soft = LogitsDistillation(TEMPERATURE, loss=keras.losses.KLDivergence())
        theirs = KerasDistiller(teacher, make_student(), soft,
                                student_loss_weight=float(np.mean(alpha)))
        theirs.compile(optimizer=lm_optimizer(steps, lr), loss=lm_loss())
        theirs.fit(data(), steps_per_epoch=steps, epochs=1, verbose=0)
        out["keras_kd"] = theirs.student
    return out


def regime_init(ctx, seed, args, state):
    """Teacher's most important half of its blocks, then KD vs labels."""
    s = ctx.settings
    if "keep" not in state:
        calib = ctx.corpus.dataset("train", s.seq_len, args.batch, seed=99).take(4)
        scores = block_importance(ctx.teacher, calib)
        n = len(scores)
        state["keep"] = most_important(scores, n // 2)
        state["importance"] = [round(float(v), 4) for v in scores]
        print(f"init: block importance {state['importance']} -> keep {state['keep']}")

    def data():
        return ctx.corpus.dataset("train", s.seq_len, args.batch, repeat=True, seed=seed)

    def student():
        return take_blocks(ctx.teacher, state["keep"])

    models = train_three_ways(student, ctx.teacher, data, args.init_steps, args.init_lr,
                              args.alpha, kinds=args.kinds)
    return models | {"start": student()}


def regime_little(ctx, seed, args, state):
    """5 % of the training text, many epochs; our KD reads a full-vocabulary teacher cache."""
    s = ctx.settings
    if "windows" not in state:
        x, y, m = ctx.corpus.windows("train", s.seq_len)
        n = max(int(len(x) * args.fraction), args.batch)
        state["windows"] = (x[:n], y[:n], m[:n])  # a contiguous 5 %: whole chapters, no leak
        if "kd" in args.kinds:
            tmp = scratch_dir("distill-little-")
            state["cleanup"] = tmp
            finite = tf.data.Dataset.from_tensor_slices(state["windows"]).batch(args.batch)
            state["cache"] = cache_teacher(ctx.teacher, finite, tmp / "c",
                                           top_k=ctx.corpus.vocab_size, verbose=False)
        print(f"little: {n} windows ({args.fraction:.0%}), "
              f"{args.little_steps * args.batch / n:.1f} epochs")

    def data():
        ds = tf.data.Dataset.from_tensor_slices(state["windows"])
        return ds.shuffle(len(state["windows"][0]), seed=seed).repeat().batch(args.batch)

    def kd_data():
        return load_teacher_cache(state["cache"], args.batch, shuffle=True, repeat=True,
                                  seed=seed)

    def student():
        keras.utils.set_random_seed(seed)
        return build_gpt(s.student_preset, vocab_size=ctx.corpus.vocab_size,
                         seq_len=s.seq_len, name="student")

    teacher = ctx.teacher if needs_teacher(args) else None
    return train_three_ways(student, teacher, data, args.little_steps, args.lr, args.alpha,
                            kd_data=kd_data, kinds=args.kinds)


def regime_long(ctx, seed, args, state):
    """A random-init student for >= 5x the baseline's steps; our KD from a top-k cache,
    Keras's Distiller with the teacher online (it cannot read a cache)."""
    s = ctx.settings

    def data():
        return ctx.corpus.dataset("train", s.seq_len, args.batch, repeat=True, seed=0)

    if "kd" in args.kinds and "cache" not in state:  # one stream for every seed
        tmp = scratch_dir("distill-long-")
        state["cleanup"] = tmp
        start = time.perf_counter()
        state["cache"] = cache_teacher(ctx.teacher, data().take(args.long_steps), tmp / "c",
                                       top_k=TOP_K, verbose=False)
        print(f"long: teacher cached in {time.perf_counter() - start:.0f} s")

    def kd_data():
        return load_teacher_cache(state["cache"], args.batch, repeat=True)

    def student():
        keras.utils.set_random_seed(seed)
        return build_gpt(s.student_preset, vocab_size=ctx.corpus.vocab_size,
                         seq_len=s.seq_len, name="student")

    teacher = ctx.teacher if needs_teacher(args) else None
    return train_three_ways(student, teacher, data, args.long_steps, args.lr, args.alpha,
                            kd_data=kd_data, kinds=args.kinds)


REGIMES = {"init": regime_init, "little": regime_little, "long": regime_long}
# keys a run rewrites even when the file already holds them (the rest it keeps from the file):
# a regimes run must not put back the SmolLM2 curve it read before a parallel curve run grew it
OWN_KEYS = ("teacher_ppl", "alpha1_matches_fit")
SMOLLM2_KEYS = ("smollm2_curve", "smollm2_blocks")


def run_regimes(ctx, args, results: dict, save) -> None:
    """Each regime over ``args.seeds``: perplexities, gap closed, saved after every seed.

    A seed's row keeps the students of other ``--kinds`` measured before with the same
    settings; rows measured with other settings are dropped, but for their labels-only
    students when only `KD_SETTINGS` changed.
    """
    test = ctx.eval_data()
    if needs_teacher(args):
        results["teacher_ppl"] = lm_quality(keras_forward(ctx.teacher), test)["perplexity"]
    for name in args.regimes:
        state, rows = {}, results.setdefault("regimes", {}).setdefault(name, {})
        settings = regime_settings(name, args)
        keep_rows(rows, settings)
        for seed in range(args.seeds):
            start = time.perf_counter()
            models = REGIMES[name](ctx, seed, args, state)
            ppl = {k: lm_quality(keras_forward(m), test)["perplexity"] for k, m in models.items()}
            row = merge_row(rows.get(str(seed)), {
                "ppl": ppl, "seconds": {"+".join(args.kinds): round(time.perf_counter() - start)}
            }, results.get("teacher_ppl"))
            rows[str(seed)] = row
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["ppl"].items())
                  + " | gap closed " + ", ".join(f"{k} {gap_text(v)}" for k, v in
                                                 row["gap_closed"].items()), flush=True)
            rows["settings"] = {k: v for k, v in state.items()
                                if k in ("keep", "importance")} | settings
            save()
        if "cleanup" in state:
            shutil.rmtree(state["cleanup"], ignore_errors=True)


def keep_rows(rows: dict, settings: dict) -> None:
    """Drop from a regime's ``rows`` what was measured with other ``settings``: everything, or
    only the KD students when nothing but `KD_SETTINGS` changed.

    Example:
        >>> rows = {"settings": {"steps": 9, "alpha": 0.0},
        ...         "0": {"ppl": {"labels": 7.0, "kd": 7.2}, "gap_closed": {"kd": -0.3},
        ...               "seconds": {"labels": 5, "kd+keras_kd": 9}}}
        >>> keep_rows(rows, {"steps": 9, "alpha": 0.5}); rows["0"]
        {'ppl': {'labels': 7.0}, 'gap_closed': {}, 'seconds': {'labels': 5}}
    """
    old = rows.get("settings", {})
    changed = {k for k, v in settings.items() if old.get(k) != v}
    if not changed:
        return
    if not changed <= set(KD_SETTINGS):
        rows.clear()
        return
    for seed, row in rows.items():
        if seed.isdigit():
            row["ppl"] = {k: v for k, v in row["ppl"].items() if k == "labels"}
            row["gap_closed"] = {}
            row["seconds"] = {k: v for k, v in _by_kind(row["seconds"]).items() if "kd" not in k}
    rows["settings"] = {**old, **settings}


def gap_text(gap: float | None) -> str:
    return "undefined (no gap)" if gap is None else f"{gap:.1%}"


def needs_teacher(args) -> bool:
    """Whether this run needs the trained teacher (labels-only long/little runs do not)."""
    return (args.regimes is None or "baseline" in args.regimes or "smollm2" in args.regimes
            or "init" in args.regimes or set(args.kinds) != {"labels"})


def _by_kind(seconds) -> dict:
    """Rows saved before runs were split by kind hold one number of seconds for all kinds."""
    return seconds if isinstance(seconds, dict) else {"all": seconds}


def merge_row(old: dict | None, new: dict, teacher_ppl: float | None) -> dict:
    """One seed's row: ``new``'s perplexities over ``old``'s, and the gap each KD student
    closes between labels-only and the teacher (when both are known).

    Example:
        >>> merge_row({"ppl": {"labels": 12.0}, "seconds": {"labels": 5}},
        ...           {"ppl": {"kd": 10.0}, "seconds": {"kd": 7}}, 8.0)["gap_closed"]
        {'kd': 0.5}
    """
    old = old or {}
    ppl = {**old.get("ppl", {}), **new["ppl"]}
    seconds = {**_by_kind(old.get("seconds", {})), **_by_kind(new["seconds"])}
    gap = {}
    if teacher_ppl is not None and "labels" in ppl:
        # no gap to close when labels alone come within MIN_GAP of the teacher: the fraction
        # would divide by ~0 (or flip sign) and mean nothing
        defined = ppl["labels"] - teacher_ppl > MIN_GAP * teacher_ppl
        gap = {k: (ppl["labels"] - ppl[k]) / (ppl["labels"] - teacher_ppl) if defined else None
               for k in ("kd", "keras_kd") if k in ppl}
    return {"ppl": ppl, "gap_closed": gap, "seconds": seconds}


def regime_settings(name: str, args) -> dict:
    steps = {"init": args.init_steps, "little": args.little_steps, "long": args.long_steps}
    extra = {"fraction": args.fraction} if name == "little" else {}
    lr = args.init_lr if name == "init" else args.lr
    return {"steps": steps[name], "batch": args.batch, "lr": lr, "alpha": args.alpha,
            "temperature": TEMPERATURE, **extra}


def stat(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


def summarise(results: dict) -> tuple[dict, str]:
    """Per regime over its seeds, mean and spread (sample std) of the gap closed and of the
    KD students' perplexity relative to labels-only, and a markdown table."""
    keys = {"init": "gap_closed_init", "little": "gap_closed_little_data",
            "long": "gap_closed_long"}
    data, spread, counts, vs_labels, reasons = {}, {}, {}, {}, {}
    table = ["| regime | seeds | teacher ppl | labels ppl | our KD ppl | Keras KD ppl | "
             "KD ppl vs labels (ours) | (Keras) | gap closed (ours) | gap closed (Keras) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results.get("regimes", {}).items():
        # seeds whose KD student is measured (a labels-only run fills rows without it)
        seeds = [r for k, r in rows.items() if k.isdigit() and {"kd", "labels"} <= set(r["ppl"])]
        if not seeds:
            continue
        counts[keys[name]] = len(seeds)
        cells, vs_labels[name] = {}, {"seeds": len(seeds)}
        for kind in ("kd", "keras_kd"):
            have = [r for r in seeds if kind in r["ppl"]]
            cells[kind] = ("-", "-")
            if not have:
                continue
            change, change_sd = stat([r["ppl"][kind] / r["ppl"]["labels"] - 1 for r in have])
            vs_labels[name] |= {kind: change, f"{kind}_spread": change_sd}
            gaps = [r["gap_closed"].get(kind) for r in have]
            prefix = "" if kind == "kd" else "keras_"
            if any(g is None for g in gaps):
                data[f"{prefix}{keys[name]}"] = spread[f"{prefix}{keys[name]}"] = None
                reasons[keys[name]] = (f"labels-only students come within {MIN_GAP:.0%} of the "
                                       "teacher's perplexity (or beat it): no gap to close; "
                                       f"see kd_vs_labels.{name}")
                closed = gap_text(None)
            else:
                mean, sd = stat(gaps)
                data[f"{prefix}{keys[name]}"], spread[f"{prefix}{keys[name]}"] = mean, sd
                closed = f"{gap_text(mean)} ± {spread_text(sd)}"
            cells[kind] = (f"{change:+.1%} ± {spread_text(change_sd)}", closed)

        def mean_ppl(k, seeds=seeds):
            vals = [r["ppl"][k] for r in seeds if k in r["ppl"]]
            return f"{np.mean(vals):.3f}" if vals else "-"

        table.append(f"| {name} ({rows['settings']['steps']} steps) | {len(seeds)} | "
                     f"{results['teacher_ppl']:.3f} | {mean_ppl('labels')} | {mean_ppl('kd')} | "
                     f"{mean_ppl('keras_kd')} | {cells['kd'][0]} | {cells['keras_kd'][0]} | "
                     f"{cells['kd'][1]} | {cells['keras_kd'][1]} |")
    for name, key in keys.items():  # a regime with no finished seed: null, not a stale value
        if key not in counts:
            data[key] = spread[key] = None
            reasons[key] = "not run: no seed with its KD student measured"
            table.append(f"| {name} | 0 | not run (no seed with its KD student measured) |")
    data["gap_closed_spread"] = spread
    data["gap_closed_seeds"] = counts  # how many seeds each mean and spread is over
    data["gap_closed_null_reason"] = {k: v for k, v in reasons.items() if data.get(k) is None}
    data["kd_vs_labels"] = vs_labels  # ppl(KD student) / ppl(labels-only) - 1, over seeds
    for name, rows in results.get("regimes", {}).items():
        table.append(f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in rows["settings"].items()))
    return data, "\n".join(table)


ALPHA_NOTE = ("\n\nalpha [start, end]: the weight of the labels loss; ours goes linearly from "
              "start to end over the steps, Keras's Distiller takes one fixed weight: the mean.")


def logits_only_table(results: dict) -> str:
    """The regimes' table of an earlier run kept under ``results["logits_only"]`` (alpha 0:
    ours and Keras's Distiller the same loss), or nothing."""
    earlier = results.get("logits_only")
    if not earlier:
        return ""
    _, table = summarise({"teacher_ppl": results.get("teacher_ppl"),
                          "regimes": earlier["regimes"]})
    return f"\n\nLogits only, alpha 0 for both (`{earlier['command']}`):\n\n{table}"


def spread_text(sd: float | None) -> str:
    return "n/a (1 seed)" if sd is None else f"{sd:.1%}"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = results.get("regimes", {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [n for n in regimes if any(k.isdigit() for k in regimes[n])]
    for j, kind in enumerate(("labels", "kd", "keras_kd")):
        means, sds = [], []
        for n in names:
            vals = [r["ppl"].get(kind, np.nan) for k, r in regimes[n].items() if k.isdigit()]
            means.append(np.nanmean(vals) if not np.all(np.isnan(vals)) else np.nan)
            sds.append(np.nanstd(vals) if not np.all(np.isnan(vals)) else 0)
        axes[0].bar(np.arange(len(names)) + 0.27 * (j - 1), means, 0.27, yerr=sds,
                    label={"labels": "labels only", "kd": "tfcompress.Distiller",
                           "keras_kd": "keras.distillation"}[kind])
    axes[0].axhline(results.get("teacher_ppl", np.nan), color="k", ls="--", label="teacher")
    axes[0].set_xticks(range(len(names)), names)
    axes[0].set_ylabel("held-out perplexity (mean ± sd over seeds)")
    axes[0].legend(fontsize=8)
    curve = results.get("smollm2_curve") or {}
    steps = [int(k) for k, v in curve.items() if k.isdigit() and v]
    if steps:
        for kind in ("kd", "labels"):
            axes[1].plot(steps, [curve[str(k)].get(kind, np.nan) for k in steps], "o-",
                         label=kind)
        axes[1].legend()
    else:
        axes[1].text(0.5, 0.5, "not run (see smollm2_curve.null_reason)", ha="center")
    axes[1].set_title("SmolLM2 half depth (importance-chosen blocks)")
    axes[1].set_xlabel("training steps")
    axes[1].set_ylabel("perplexity (log scale)")
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


SMOLLM2_BATCH, SMOLLM2_SEQ, SMOLLM2_LR = 4, 128, 1e-4  # 4 x 128 tokens a step, as llm.py
# Characters of the Austen training text the SmolLM2 students see (--smollm2-chars): the
# recorded curve's 200,000 (~50k tokens) are ~10 passes at 1,000 steps, a little-data regime;
# ~2,200,000 would give 1,000 steps without repeating a window.
SMOLLM2_CHARS = 200_000


def curve_table(curve: dict, chars: int = SMOLLM2_CHARS) -> str:
    """The SmolLM2 curve (students trained on ``chars`` characters) as a markdown table
    (budgets not run show a dash), or nothing."""
    rows = [(b, v) for b, v in curve.items() if b.isdigit()]
    if not any(v for _, v in rows):
        return ""

    def cell(value, kind):
        return f"{value[kind]:.1f}" if value and kind in value else "-"

    lines = [f"SmolLM2 students train on the first {chars:,} characters of the Austen training "
             f"text ({1000 * SMOLLM2_BATCH * SMOLLM2_SEQ / (chars / 4):.1f} passes at 1,000 "
             "steps of 4 x 128 tokens, at ~4 characters a token); perplexity on 2,048 held-out "
             "tokens.\n",
             "| SmolLM2 half depth, steps | labels-only ppl | logit KD ppl |", "|---|---|---|"]
    lines += [f"| {b} | {cell(v, 'labels')} | {cell(v, 'kd')} |" for b, v in rows]
    note = f"\n\n{curve['null_reason']}" if curve.get("null_reason") else ""
    return "\n".join(lines) + note + "\n\n"


BUDGETS = ("0", "100", "300", "1000")  # SmolLM2 curve: training steps of 4 x 128 tokens


def mark_missing_budgets(curve: dict) -> None:
    """Say in ``curve["null_reason"]`` which budgets have no pair of figures yet (or drop it)."""
    missing = [b for b in BUDGETS if not (curve.get(b) or {}).keys() >= {"kd", "labels"}]
    curve.pop("null_reason", None)
    if missing:
        curve["null_reason"] = (
            f"budgets {', '.join(missing)} not run (or not finished): run --regimes smollm2 "
            f"--smollm2-steps {' '.join(missing)}")


def smollm2_curve(args, record, record_blocks) -> None:
    """Minitron-style on SmolLM2-135M: half its blocks kept by measured importance, then
    labels-only and logit KD (alpha 0, T 1) from the full model for each of
    ``args.smollm2_steps``; ``record_blocks({"keep", "importance"})`` once chosen,
    ``record(steps, kind, ppl)`` after every student."""
    import argparse

    from benchmarks.llm import EVAL_TOKENS, WINDOW, gguf_path
    from tfcompress.data import bundled_corpus
    from tfcompress.models import causal_lm_perplexity
    from tfcompress.models.loaders import gguf_tokenizer, load_gguf

    path = gguf_path(argparse.Namespace(gguf=None, quick=False, out=None))
    tokenizer, model = gguf_tokenizer(path), load_gguf(path)
    text = bundled_corpus("austen")
    eval_ids = tokenizer.encode(text["test"][:20_000])[:EVAL_TOKENS]
    train_ids = np.asarray(tokenizer.encode(text["train"][:args.smollm2_chars]))
    rng = np.random.default_rng(0)
    calib = np.stack([train_ids[i:i + WINDOW] for i in rng.integers(0, train_ids.size - WINDOW, 8)])
    scores = block_importance(model, [calib[i:i + 2] for i in range(0, 8, 2)])
    keep = most_important(scores, len(scores) // 2)
    record_blocks({"keep": keep, "importance": [round(float(v), 4) for v in scores],
                   "train_chars": args.smollm2_chars})

    def ppl(student):
        return causal_lm_perplexity(keras_forward(student), eval_ids, WINDOW)["perplexity"]

    start = ppl(take_blocks(model, keep))
    print(f"smollm2: keep {keep}, untrained half-depth ppl {start:.1f}", flush=True)
    record(0, "labels", start)
    record(0, "kd", start)
    n = (train_ids.size - 1) // SMOLLM2_SEQ * SMOLLM2_SEQ
    x, y = train_ids[:n].reshape(-1, SMOLLM2_SEQ), train_ids[1:n + 1].reshape(-1, SMOLLM2_SEQ)
    data = tf.data.Dataset.from_tensor_slices((x, y, np.ones(y.shape, np.float32))).shuffle(
        len(x), seed=0).repeat().batch(SMOLLM2_BATCH, drop_remainder=True)
    for steps in args.smollm2_steps:
        for kind in ("labels", "kd"):
            began = time.perf_counter()
            student = take_blocks(model, keep)
            trainer = student if kind == "labels" else Distiller(model, student, alpha=0.0,
                                                                 temperature=1.0)
            loss = {"loss": lm_loss()} if kind == "labels" else {}  # the Distiller has its own
            trainer.compile(optimizer=lm_optimizer(steps, SMOLLM2_LR, warmup=0.1), **loss)
            trainer.fit(data, steps_per_epoch=steps, epochs=1, verbose=2)
            value = ppl(student)
            print(f"smollm2 {steps} steps {kind}: ppl {value:.2f} "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
            record(steps, kind, value)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("distill", __doc__)
    # none given: only re-summarise results/distill.json (and rerun the alpha=1 check)
    parser.add_argument("--regimes", nargs="*", default=None,
                        choices=["baseline", *REGIMES, "smollm2"],
                        help="default: init little long (with --quick: baseline too)")
    parser.add_argument("--steps", type=int, default=200, help="baseline steps")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="regime batch size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--alpha", type=float, nargs=2, default=[0.0, 1.0],
                        metavar=("START", "END"),
                        help="weight of the hard (labels) loss in the regimes' KD: ours goes "
                             "linearly from START to END, Keras's is fixed at their mean "
                             "(0 0: logits only; 0.5 0.5: both fixed, the same loss)")
    parser.add_argument("--init-lr", type=float, default=3e-4,
                        help="smaller: the init student starts from trained weights")
    parser.add_argument("--init-steps", type=int, default=100)
    parser.add_argument("--little-steps", type=int, default=400)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--long-steps", type=int, default=1000)
    parser.add_argument("--smollm2-steps", type=int, nargs="*", default=[100, 300, 1000],
                        help="training budgets of the SmolLM2 curve (step 0 is always measured)")
    parser.add_argument("--smollm2-chars", type=int, default=SMOLLM2_CHARS,
                        help="characters of training text for the SmolLM2 students (the "
                             "recorded curve: the default)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                        help="which students each regime trains; a run merges its figures "
                             "into the seeds' rows already saved with the same settings "
                             "(labels alone need no teacher: they can run while it trains)")
    args = parse_args(parser, argv)
    for value in args.alpha:  # before the teacher loads, not after the first student trained
        check_alpha(value)
    if args.regimes is None:
        args.regimes = ["baseline", *REGIMES] if args.quick else ["init", "little", "long"]
    if args.quick:  # a smoke run: every code path, a few steps each, one batch of "little" text
        args.steps = args.init_steps = args.little_steps = args.long_steps = QUICK.finetune_steps
        args.repeats, args.seeds, args.batch = QUICK.latency_rounds, 1, QUICK.batch_size
        args.fraction = 0.0
    path = results_dir(args.quick) / "distill.json"
    # an earlier run's figures are kept only when this commit made them (merge_source)
    results = merge_source(path, args) if path.exists() and not args.quick else {}
    # the baseline's table (kept from the last baseline run) follows the regimes' one
    old_md = path.with_suffix(".md").read_text() if path.with_suffix(".md").exists() else ""
    old_md = old_md[old_md.index("| model |"):] if "| model |" in old_md else ""
    tables, own = {}, set(OWN_KEYS)
    ctx = None
    if {"baseline", *REGIMES} & set(args.regimes):
        ctx = demo_context(args, teacher=needs_teacher(args))

    def save():
        # Regimes may run as parallel processes: merge what the file holds now with ours.
        if path.exists() and not args.quick:
            on_disk = json.loads(path.read_text())
            on_disk.pop("meta", None)  # this commit's: checked when the run started
            mine = {k: v for k, v in results.get("regimes", {}).items() if k in requested}
            results.update({k: v for k, v in on_disk.items() if k != "regimes"} | {
                k: v for k, v in results.items() if k not in on_disk or k in own})
            for name, rows in mine.items():  # seeds' students saved meanwhile by another run
                disk = on_disk.get("regimes", {}).get(name, {})
                if disk.get("settings") == rows.get("settings"):
                    for seed, row in disk.items():
                        if seed.isdigit():
                            rows[seed] = merge_row(row, rows.get(seed, {"ppl": {},
                                                                         "seconds": {}}),
                                                   results.get("teacher_ppl"))
            results["regimes"] = on_disk.get("regimes", {}) | mine
        mark_missing_budgets(results.setdefault("smollm2_curve", dict.fromkeys(BUDGETS)))
        summary, tables["regimes"] = summarise(results)
        results.update(summary)
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(results, path.parent / "distill_regimes.png")
        table = (tables["regimes"] + ALPHA_NOTE + logits_only_table(results)
                 + "\n\n![regimes](distill_regimes.png)\n\n"
                 + curve_table(results.get("smollm2_curve") or {},
                               (results.get("smollm2_blocks") or {}).get("train_chars",
                                                                         SMOLLM2_CHARS))
                 + old_md)
        write_results("distill", table, results, args)

    requested = list(args.regimes)
    if "baseline" in requested:
        table, data = baseline(ctx, args)
        results.update(data)
        own |= set(data)
        old_md = table
    regimes = [r for r in requested if r in REGIMES]
    if regimes:
        args.regimes = regimes
        run_regimes(ctx, args, results, save)
    if "smollm2" in requested:  # budgets not asked for keep their figures from earlier runs
        own |= set(SMOLLM2_KEYS)
        earlier = results.get("smollm2_curve") or {}
        results["smollm2_curve"] = {b: None if b == "0" or int(b) in args.smollm2_steps
                                    else earlier.get(b) for b in BUDGETS}

        def record(steps, kind, value):
            curve = results["smollm2_curve"]
            curve[str(steps)] = {**(curve.get(str(steps)) or {}), kind: value}
            save()

        smollm2_curve(args, record, lambda blocks: results.update(smollm2_blocks=blocks))
    results["alpha1_matches_fit"] = alpha1_matches_fit()
    save()


def alpha1_matches_fit() -> bool:
    """`Distiller(alpha=1)` vs plain ``fit`` on a tiny model, bitwise (tests/test_distill_exact)."""
    def tiny(name, seed):
        keras.utils.set_random_seed(seed)
        return build_gpt("test-tiny", vocab_size=32, seq_len=8, name=name)

    x = np.random.default_rng(0).integers(0, 32, (8, 8)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, np.roll(x, -1, 1),
                                               np.ones((8, 8), "float32"))).batch(4).repeat()
    plain = tiny("student", 0)
    plain.compile(optimizer=lm_optimizer(4, 1e-2), loss=lm_loss())
    plain.fit(data, steps_per_epoch=4, verbose=0)
    distiller = Distiller(tiny("teacher", 1), tiny("student", 0), alpha=1.0)
    distiller.compile(optimizer=lm_optimizer(4, 1e-2))
    distiller.fit(data, steps_per_epoch=4, verbose=0)
    return all(np.array_equal(a, b) for a, b in zip(plain.get_weights(),
                                                    distiller.student.get_weights(),
                                                    strict=True))

if __name__ == "__main__":
    main()
