"""Demo stage ``distill``: a small student distilled from the current model."""

from __future__ import annotations

from tfcompress.pipeline import DemoContext, stage


@stage("distill")
def distill_student(ctx: DemoContext) -> None:
    """Distil a ``student_preset`` student from ``ctx.models[ctx.final]`` (forward KL, T=1)."""
    import keras

    from tfcompress.distill.distiller import Distiller, vocab_size_of
    from tfcompress.models import build_gpt
    from tfcompress.models.training import lm_optimizer

    s = ctx.settings
    teacher = ctx.models[ctx.final]
    keras.utils.set_random_seed(s.seed)
    student = build_gpt(s.student_preset, vocab_size=vocab_size_of(teacher, "teacher"),
                        seq_len=s.seq_len, name="student")
    distiller = Distiller(teacher, student, alpha=0.5, temperature=1.0)
    distiller.compile(optimizer=lm_optimizer(s.student_steps))
    print(f"distill: {student.count_params():,}-parameter student from {ctx.final!r}, "
          f"{s.student_steps} steps")
    history = distiller.fit(ctx.train_data(), steps_per_epoch=s.student_steps, epochs=1,
                            verbose=2).history
    ctx.models["student"] = student
    source, ctx.final = ctx.final, "student"
    ctx.measure("student")
    ppl = next(r for r in ctx.reports if r.name == "student").quality["perplexity"]
    ctx.notes.append(
        f"Distilled `student` ({student.count_params():,} params) from `{source}` in "
        f"{s.student_steps} steps (forward KL, T=1, alpha=0.5): held-out perplexity {ppl:.2f}, "
        f"final soft loss {history['soft_loss'][-1]:.3f}."
    )
