"""The demo's ``prune`` stage: SparseGPT 50 % one-shot, a short masked fine-tune, strip.

Example:
    >>> run_demo(DemoSettings.quick(), stages=("teacher", "prune"))
"""

from __future__ import annotations

from tfcompress.pipeline import DemoContext, stage
from tfcompress.prune.api import prune
from tfcompress.prune.config import PruneConfig
from tfcompress.prune.training import UpdatePruning, sparsity_summary, strip_pruning

# transformer blocks only: embeddings and the LM head are kept dense, as in Wanda/SparseGPT
DEMO_CONFIG = PruneConfig(method="sparsegpt", sparsity=0.5, include="block")


def finetune_pruned(model, dataset, steps: int, learning_rate: float = 3e-4, verbose=1):
    """Train a `prune`d model for ``steps`` batches with its zeros kept, then strip it (in
    place); returns the plain model."""
    from tfcompress.models.training import train_lm

    if steps > 0:
        train_lm(model, dataset, steps, learning_rate=learning_rate, verbose=verbose,
                 callbacks=[UpdatePruning()])
    return strip_pruning(model)


@stage("prune")
def prune_stage(ctx: DemoContext) -> None:
    """Prune ``ctx.models[ctx.final]`` to 50 % and fine-tune briefly; becomes ``ctx.final``."""
    s = ctx.settings
    source = ctx.final
    pruned = prune(ctx.models[source], DEMO_CONFIG, data=ctx.calibration())
    pruned = finetune_pruned(pruned, ctx.train_data(), s.finetune_steps)
    name = f"{source}-pruned"
    ctx.models[name] = pruned
    ctx.final = name
    ctx.measure(name)
    total = sparsity_summary(pruned)["total"]
    ctx.notes.append(
        f"Pruned `{source}` with SparseGPT to {total['sparsity']:.0%} of its transformer-block "
        f"weights ({total['zeros']:,} zeros), then fine-tuned {s.finetune_steps} steps with "
        f"the masks kept: `{name}`."
    )
