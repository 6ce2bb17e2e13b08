"""Demo stage ``factorize``: a low-rank side branch of the teacher.

The teacher's attention projections and MLP layers are factorized with SVD-LLM whitening at
60 % of their weights, fine-tuned briefly with ``model.fit`` and measured as
``teacher-lowrank``. ``ctx.final`` is left alone (this branch does not feed later stages).
"""

from __future__ import annotations

from tfcompress.lowrank.config import FactorizeConfig
from tfcompress.lowrank.factorize import factorize
from tfcompress.pipeline import DemoContext, stage

DEMO_CONFIG = FactorizeConfig(method="svd-llm", target_ratio=0.6, include=r"_attn|_mlp_")


@stage("factorize")
def factorize_teacher(ctx: DemoContext) -> None:
    """Factorize the teacher's attention/MLP kernels, fine-tune, measure ``teacher-lowrank``."""
    from tfcompress.models.training import train_lm

    model = factorize(ctx.teacher, DEMO_CONFIG, calibration=ctx.calibration())
    plans = model.factorization
    before = sum(p.params_before for p in plans)
    after = sum(p.params_after for p in plans)
    train_lm(model, ctx.train_data(), ctx.settings.finetune_steps, learning_rate=3e-4,
             verbose=2)
    ctx.models["teacher-lowrank"] = model
    ctx.measure("teacher-lowrank")
    ppl = {r.name: r.quality.get("perplexity") for r in ctx.reports}
    ratio = ppl["teacher-lowrank"] / ppl["teacher"] if ppl.get("teacher") else float("nan")
    ctx.notes.append(
        f"Factorized the teacher's attention/MLP kernels (SVD-LLM, {after / before:.0%} of "
        f"their weights, {model.count_params():,} params in all) and fine-tuned "
        f"{ctx.settings.finetune_steps} steps: perplexity {ratio:.3f}x the teacher's.")
