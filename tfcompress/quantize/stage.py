"""Demo stage ``quantize``: int4 group-wise GPTQ of the current model (`ctx.final`)."""

from __future__ import annotations

import tempfile
import time

from tfcompress.errors import TfcompressError
from tfcompress.pipeline import DemoContext, stage
from tfcompress.quantize.api import QuantizeConfig, quantize


@stage("quantize")
def quantize_stage(ctx: DemoContext) -> None:
    """GPTQ int4 (groups of 32 rows, else per channel; embeddings RTN) from
    ``ctx.calibration()``; becomes ``ctx.final`` when it exports to TFLite (float32, codes
    decoded in the graph)."""
    from tfcompress.export import export_tflite

    source = ctx.final
    # one calibration pass (sequential=False): ~4x faster on the teacher, keeps the stage
    # near its 60 s budget; the benchmark measures the sequential variant
    config = QuantizeConfig(method="gptq", bits=4, granularity="group", group_size=32,
                            sequential=False)
    start = time.perf_counter()
    try:
        model = quantize(ctx.models[source], config, calibration=ctx.calibration())
    except TfcompressError as err:  # e.g. a pruned width that 32 does not divide
        if "group_size" not in str(err):
            raise
        config = QuantizeConfig(method="gptq", bits=4, granularity="channel",
                                sequential=False)
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
    groups = f"group {config.group_size}" if config.group_size else "per channel"
    ctx.notes.append(f"Quantized `{source}` to int4 GPTQ ({groups}) in {seconds:.1f} s as "
                     f"`{name}`; {exported}.")
