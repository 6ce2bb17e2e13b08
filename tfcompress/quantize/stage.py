"""Demo stage ``quantize``: int4 group-wise GPTQ of the current model (`ctx.final`)."""

from __future__ import annotations

import tempfile
import time

from tfcompress.pipeline import DemoContext, stage
from tfcompress.quantize.api import QuantizeConfig, quantize


@stage("quantize")
def quantize_stage(ctx: DemoContext) -> None:
    """GPTQ int4 (groups of 32 rows, a shorter last group where 32 does not divide a pruned
    width; embeddings RTN) from
    ``ctx.calibration()``; becomes ``ctx.final`` when it exports to TFLite (float32, codes
    decoded in the graph)."""
    from tfcompress.export import export_tflite

    source = ctx.final
    # one calibration pass (sequential=False): ~4x faster on the teacher, keeps the stage
    # near its 60 s budget; the benchmark measures the sequential variant
    config = QuantizeConfig(method="gptq", bits=4, granularity="group", group_size=32,
                            ragged=True, sequential=False)
    start = time.perf_counter()
    model = quantize(ctx.models[source], config, calibration=ctx.calibration())
    seconds = time.perf_counter() - start
    name = f"{source}-int4"
    ctx.models[name] = model
    ctx.measure(name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            export_tflite(model, f"{tmp}/q.tflite", seq_len=ctx.settings.seq_len)
        ctx.final, exported = name, "exports to TFLite"
    except Exception as err:  # noqa: BLE001 - the stage must not break the demo
        exported = f"did not export ({type(err).__name__}); final stays `{source}`"
    ctx.notes.append(f"Quantized `{source}` to int4 GPTQ (group {config.group_size}) in "
                     f"{seconds:.1f} s as "
                     f"`{name}`; {exported}.")
