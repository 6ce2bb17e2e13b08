"""One call to measure a model (Keras or ``.tflite``), and reports that compare several.

Example:
    >>> base = evaluate(teacher, test_batches, name="teacher")
    >>> small = evaluate(student, test_batches, name="student")
    >>> print(compare([base, small], baseline="teacher"))
    >>> write_report([base, small], "runs/demo", baseline="teacher")
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfcompress.core.latency import keras_forward, keras_latency
from tfcompress.core.layers import is_keras_model
from tfcompress.core.quality import classifier_accuracy, lm_quality
from tfcompress.core.signature import model_seq_len, output_width
from tfcompress.core.validation import (
    check_input_file,
    check_seq_len,
    check_token_ids,
    model_positions,
    model_vocab,
)
from tfcompress.errors import TfcompressError
from tfcompress.evaluate.plots import plot_quality_vs_size
from tfcompress.evaluate.size import bits_per_weight, file_sizes, keras_file_sizes, param_counts

TASKS = ("lm", "classifier")


@dataclass
class Report:
    """Size, speed and quality of one model; ratios come from `compare`."""

    name: str
    kind: str
    params: int | None = None
    nonzero: int | None = None
    bytes: int | None = None
    gzip_bytes: int | None = None
    bits_per_weight: float | None = None
    gzip_bits_per_weight: float | None = None
    latency: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    model,
    data=None,
    *,
    name: str | None = None,
    task: str = "lm",
    seq_len: int | None = None,
    batch_sizes: tuple[int, ...] = (1, 8),
    repeats: int = 10,
    max_batches: int | None = None,
    params: int | None = None,
) -> Report:
    """Measure a Keras model or a ``.tflite`` file.

    ``data`` holds ``(inputs, targets[, mask])`` batches (a tf.data dataset or a tuple of
    arrays) for perplexity and next-token accuracy, or ``(x, y)`` for ``task="classifier"``.
    Latency is measured for each of ``batch_sizes`` (empty to skip) at ``seq_len`` tokens.
    ``params`` gives the weight count of a ``.tflite`` file for its bits per weight.
    """
    if task not in TASKS:
        raise TfcompressError(f"task must be one of {TASKS}, got {task!r}")
    is_file = isinstance(model, str | Path)
    if is_file and Path(model).suffix != ".tflite":
        raise TfcompressError(f"model path must end in .tflite, got {str(model)!r}")
    if is_file:
        check_input_file(model, "model", ".tflite")
    if not is_file and not is_keras_model(model):
        raise TfcompressError(
            "model must be a Keras model or a path to a .tflite file, "
            f"got {type(model).__name__}"
        )
    if not is_file:
        check_seq_len(model, seq_len)
        check_lm_data(model, data, task)
    if is_file:
        return _evaluate_tflite(Path(model), data, name, task, batch_sizes, repeats,
                                max_batches, params)
    return _evaluate_keras(model, data, name, task, seq_len, batch_sizes, repeats, max_batches)


def check_lm_data(model, data, task: str) -> None:
    """Array batches ``(inputs, targets[, mask])`` hold token ids the model takes (datasets
    are read later, batch by batch)."""
    if task != "lm" or not isinstance(data, tuple | list) or not data:
        return
    batches = [data] if isinstance(data, tuple) else data
    vocab, positions = model_vocab(model), model_positions(model)
    for i, batch in enumerate(batches):
        name = "data" if isinstance(data, tuple) else f"data[{i}]"
        if not isinstance(batch, tuple | list) or len(batch) not in (2, 3):
            raise TfcompressError(f"{name} must be an (inputs, targets[, mask]) batch, got "
                                  f"{type(batch).__name__}")
        if vocab is not None:
            check_token_ids(batch[0], f"{name} inputs", vocab, positions)
            check_token_ids(batch[1], f"{name} targets", vocab, positions)


def _quality(predict, data, task: str, max_batches: int | None) -> dict:
    if data is None:
        return {}
    if task == "classifier":
        x, y = data
        return {"accuracy": classifier_accuracy(predict, x, y)}
    return lm_quality(predict, data, max_batches)


def _evaluate_keras(model, data, name, task, seq_len, batch_sizes, repeats, max_batches):
    counts = param_counts(model)
    sizes = keras_file_sizes(model)
    report = Report(name or model.name, "keras", **counts, **sizes)
    report.bits_per_weight = bits_per_weight(sizes["bytes"], counts["params"])
    report.gzip_bits_per_weight = bits_per_weight(sizes["gzip_bytes"], counts["params"])
    if batch_sizes and task == "lm":
        length = model_seq_len(model, seq_len)
        vocab = output_width(model)
        report.latency = {
            str(b): keras_latency(model, b, length, vocab, repeats=repeats) for b in batch_sizes
        }
    report.quality = _quality(keras_forward(model), data, task, max_batches)
    return report


def _evaluate_tflite(path, data, name, task, batch_sizes, repeats, max_batches, params):
    """Phone-style figures from `tfcompress.export.measure`: latency per batch size (default
    threads) and at batch 1 per threads setting, peak interpreter memory, operators."""
    from tfcompress.export.measure import measure_tflite
    from tfcompress.export.runner import TFLiteRunner

    runner = TFLiteRunner(path)
    sizes = file_sizes(path)
    report = Report(name or path.stem, "tflite", params=params, **sizes)
    if params:
        report.bits_per_weight = bits_per_weight(sizes["bytes"], params)
        report.gzip_bits_per_weight = bits_per_weight(sizes["gzip_bytes"], params)
    if task == "lm":
        report.latency = {str(b): runner.latency(b, repeats=repeats) for b in batch_sizes}
    if batch_sizes:
        measured = measure_tflite(path, threads=(1, 2), repeats=repeats)
        report.extra.update({k: measured[k] for k in (
            "latency_ms_by_threads", "peak_memory", "ops", "tensor_dtypes",
            "xnnpack_partitions", "not_delegated")})
    report.quality = _quality(runner.predict, data, task, max_batches)
    return report


def _ratio(a, b):
    return None if a is None or not b else a / b


def ratios(report: Report, baseline: Report) -> dict:
    """Size ratio, speed-up and quality drop against ``baseline``; the speed-up only within
    one runtime (Keras against Keras, TFLite against TFLite: None across them, where it
    would measure the runtimes rather than the compression)."""
    lat = report.latency.get("1", {}).get("median_ms")
    base_lat = baseline.latency.get("1", {}).get("median_ms")
    if report.kind != baseline.kind:
        base_lat = None
    q, bq = report.quality, baseline.quality
    out = {
        "size_ratio": _ratio(report.bytes, baseline.bytes),
        "gzip_size_ratio": _ratio(report.gzip_bytes, baseline.gzip_bytes),
        "speedup": _ratio(base_lat, lat),
    }
    if "perplexity" in q and "perplexity" in bq:
        out["perplexity_ratio"] = q["perplexity"] / bq["perplexity"]
    if "accuracy" in q and "accuracy" in bq:
        out["accuracy_drop"] = bq["accuracy"] - q["accuracy"]
    return out


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def compare(reports: list[Report], baseline: str | None = None) -> str:
    """Markdown table of the reports with ratios to the one named ``baseline`` (default first);
    ``params`` are the model's parameters (quantized ones counted once, `param_counts`),
    ``bytes`` what its file stores; the speed-up of a ``.tflite`` row is against the first
    ``.tflite`` row when the baseline is a Keras model (`ratios`)."""
    if not reports:
        raise TfcompressError("reports is empty: give at least one Report")
    names = [r.name for r in reports]
    base_name = baseline or names[0]
    if base_name not in names:
        raise TfcompressError(f"baseline must be one of {names}, got {base_name!r}")
    base = reports[names.index(base_name)]
    rows = [
        "| model | kind | params | non-zero | bytes | gzip bytes | size ratio | gzip ratio "
        "| latency b1 (ms) | speed-up (same runtime) | perplexity | ppl ratio "
        "| next-token acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    first_of = {}
    for r in reports:
        first_of.setdefault(r.kind, r)
    for r in reports:
        k = ratios(r, base)
        if r.kind != base.kind:
            k["speedup"] = ratios(r, first_of[r.kind])["speedup"]
        q = r.quality
        rows.append(
            f"| {r.name} | {r.kind} | {_fmt(r.params, ',')} | {_fmt(r.nonzero, ',')} "
            f"| {_fmt(r.bytes, ',')} | {_fmt(r.gzip_bytes, ',')} | {_fmt(k['size_ratio'], '.3f')} "
            f"| {_fmt(k['gzip_size_ratio'], '.3f')} "
            f"| {_fmt(r.latency.get('1', {}).get('median_ms'), '.2f')} "
            f"| {_fmt(k['speedup'], '.2f')} | {_fmt(q.get('perplexity'), '.3f')} "
            f"| {_fmt(k.get('perplexity_ratio'), '.3f')} | {_fmt(q.get('accuracy'), '.3f')} |"
        )
    return "\n".join(rows)


def write_report(
    reports: list[Report],
    out_dir: str | Path,
    baseline: str | None = None,
    title: str = "tfcompress report",
    notes: str = "",
) -> Path:
    """Write ``report.md``, ``report.json`` and ``quality_vs_size.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_quality_vs_size(reports, out / "quality_vs_size.png")
    text = f"# {title}\n\n{compare(reports, baseline)}\n\n![quality vs size](quality_vs_size.png)\n"
    if notes:
        text += f"\n{notes}\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.json").write_text(
        json.dumps([r.to_dict() for r in reports], indent=2), encoding="utf-8"
    )
    return out / "report.md"


__all__ = ["Report", "compare", "evaluate", "ratios", "write_report"]
