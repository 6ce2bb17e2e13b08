"""An export stage's ``llm`` section: the input model as on-device KV-cache bundles.

For each mode, `export_llm` writes a bundle folder under ``exports/`` (verified against the
Keras model on the recipe's held-out text), `write_litertlm` packs it for LiteRT-LM, and the
bundle is measured as a phone would run it (`LLMRunner`): perplexity on the held-out windows
the other models are measured on, prefill and decode tokens/s, and a greedy sample.
``budget_mb`` gives the ``int4`` bundle int8 layers within that size, chosen on the run's
calibration windows (`tfcompress.export.llm_budget`); a model made by a quantize stage has
them rounded from the model that stage started from (`quantized_from`).

Example:
    >>> STAGES["export"](run, {"stage": "export", "input": "smollm2",
    ...                        "llm": {"modes": ["int4"], "prefill_lengths": [32, 128],
    ...                                "cache_length": 1024, "litertlm": True}})
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfcompress.recipes.stage_result import StageResult

BUNDLE_KIND = "llm bundle"  # `Report.kind` of a bundle's row
SPEED_TOKENS = 32  # decode steps timed per bundle
SPEED_PROMPT = 128  # at most this many held-out tokens prefilled when timing


def bundle_tokenizer(run):
    """What `export_llm` takes as the tokenizer: the GGUF file when the recipe uses the
    model's own tokenizer from one (its BOS/EOS ids come along), else the run's tokenizer
    when it can be written as ``tokenizer.json``, else None."""
    model = run.recipe["model"]
    if "gguf" in model and run.data["tokenizer"] == "model":
        return model["gguf"]
    return run.tokenizer if hasattr(run.tokenizer, "to_json") else None


def quantized_from(run, name: str):
    """The model the quantize stage that made ``name`` started from (`export_llm`'s
    ``float_model``: a budget's int8 maps are rounded from its float weights, not from the
    int4 codes), or None when no quantize stage made ``name``.

    Example:
        >>> quantized_from(run, "smollm2-int4") is run.model("smollm2")
        True
    """
    made = next((st for st in run.recipe["stages"]
                 if st["stage"] == "quantize" and st.get("name") == name), None)
    return None if made is None else run.model(made["input"])


def bundle_report(run, folder: Path, name: str, params: int | None, prompt_ids) -> object:
    """A `Report` of the bundle in ``folder``: bytes, quality on the run's held-out windows
    (one decode step per token, from an empty cache for each window) and tokens/s."""
    from tfcompress.evaluate import Report
    from tfcompress.evaluate.quality import lm_quality
    from tfcompress.evaluate.size import bits_per_weight
    from tfcompress.export.llm_runner import LLMRunner, measure_speed

    runner = LLMRunner(folder)
    tflite = folder / runner.config["model_file"]
    size = tflite.stat().st_size
    report = Report(name, BUNDLE_KIND, params=params, bytes=size,
                    bits_per_weight=bits_per_weight(size, params) if params else None)
    report.quality = lm_quality(lambda x: np.stack([runner.logits(row) for row in x]),
                                run.eval_data())
    steps = min(SPEED_TOKENS, runner.cache_length // 2)  # a toy's cache is short
    length = min(SPEED_PROMPT, len(prompt_ids), runner.cache_length - steps)
    report.extra = {"bundle": str(folder), "mode": runner.config["mode"],
                    **measure_speed(runner, prompt_ids[:length], steps)}
    return report


def bundle_sample(folder: Path, prompt: str, tokens: int) -> str:
    """Greedy text of the bundle after ``prompt`` (its start cut when prompt and text would
    not fit the cache)."""
    from tfcompress.export.llm_runner import LLMRunner

    runner = LLMRunner(folder)
    ids = runner.encode(prompt)[-(runner.cache_length - tokens):]
    return prompt + runner.tokenizer.decode(list(runner.generate_ids(ids, tokens)))


def llm_bundles(run, st: dict):
    """The ``llm`` section of an export stage: one verified bundle per mode, with its
    ``.litertlm``, its report row and a greedy sample; returns a `StageResult`."""
    from tfcompress.evaluate.size import param_counts
    from tfcompress.export import export_llm
    from tfcompress.export.litertlm import write_litertlm

    spec = st["llm"]
    name, model = st["input"], run.model(st["input"])
    tokenizer = bundle_tokenizer(run)
    held_out = np.asarray(run.eval_data()[0][0][0])  # a window of the recipe's held-out text
    params = param_counts(model)["params"]
    result = StageResult()
    for mode in spec["modes"]:
        folder = run.out / "exports" / f"{name}.{mode}"
        # budget_mb: int8 for the int4 layers that need it most, measured on the calibration
        budget = ({"budget_mb": spec["budget_mb"], "calibration": run.calibration(),
                   "float_model": quantized_from(run, name)}
                  if mode == "int4" and spec.get("budget_mb") is not None else {})
        exported = export_llm(model, folder, prefill_lengths=spec["prefill_lengths"],
                              cache_length=spec["cache_length"], mode=mode,
                              cache_buckets=spec.get("cache_buckets"),
                              kv_cache_dtype=spec.get("kv_cache_dtype", "float32"),
                              rotate=spec.get("rotate"), tokenizer=tokenizer,
                              verify_text=held_out, verbose=run.verbose,
                              **budget)
        label = f"{name} ({mode} bundle)"
        result.files[f"{name}.{mode}/"] = str(folder)
        note = (f"Bundled `{name}` as `{folder.name}/` ({exported.bytes:,} bytes, {mode}), "
                f"verified on {exported.verified_on}: next-token agreement "
                f"{exported.agreement:.1%}, perplexity {exported.perplexity:.3f} vs Keras "
                f"{exported.keras_perplexity:.3f}")
        if spec["litertlm"] and tokenizer is not None:
            packed = write_litertlm(folder)
            result.files[f"{name}.{mode}.litertlm"] = str(packed)
            note += f"; `{packed.name}` {packed.stat().st_size:,} bytes for LiteRT-LM"
        elif spec["litertlm"]:
            note += "; no .litertlm (the run's tokenizer cannot be written as tokenizer.json)"
        report = bundle_report(run, folder, label, params, held_out)
        result.reports.append(report)
        result.notes.append(f"{note}; prefill {report.extra['prefill_tokens_per_s']:.0f} "
                            f"tokens/s, decode {report.extra['decode_tokens_per_s']:.1f} "
                            "tokens/s.")
        if tokenizer is not None:
            result.samples[label] = bundle_sample(folder, st.get("prompt",
                                                  run.samples["prompt"]), run.samples["tokens"])
    return result
