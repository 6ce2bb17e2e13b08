"""One call to measure a model (Keras or ``.tflite``), and reports that compare several.

Example:
    >>> base = evaluate(teacher, test_batches, name="teacher")
    >>> small = evaluate(student, test_batches, name="student")
    >>> print(compare([base, small], baseline="teacher"))
    >>> write_report([base, small], "runs/demo", baseline="teacher")
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfcompress.core.validation import (
    check_input_file,
    check_seq_len,
    check_token_ids,
    model_positions,
    model_vocab,
)
from tfcompress.errors import TfcompressError
from tfcompress.evaluate.latency import keras_forward, keras_latency
from tfcompress.evaluate.quality import classifier_accuracy, lm_quality
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


def _is_model(model) -> bool:
    from tfcompress.export.tflite import _is_keras_model

    return _is_keras_model(model)


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
    if not is_file and not _is_model(model):
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
        from tfcompress.core.signature import output_width
        from tfcompress.export.tflite import model_seq_len

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
    """Size ratio, speed-up and quality drop against ``baseline``."""
    lat = report.latency.get("1", {}).get("median_ms")
    base_lat = baseline.latency.get("1", {}).get("median_ms")
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
    """Markdown table of the reports with ratios to the one named ``baseline`` (default first)."""
    if not reports:
        raise TfcompressError("reports is empty: give at least one Report")
    names = [r.name for r in reports]
    base_name = baseline or names[0]
    if base_name not in names:
        raise TfcompressError(f"baseline must be one of {names}, got {base_name!r}")
    base = reports[names.index(base_name)]
    rows = [
        "| model | kind | params | non-zero | bytes | gzip bytes | size ratio | gzip ratio "
        "| latency b1 (ms) | speed-up | perplexity | ppl ratio | next-token acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        k = ratios(r, base)
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


# label positions tried in turn (points from the marker): beside it, then rings further out
_LABEL_OFFSETS = ((5, 4), *((round(r * math.cos(a)), round(r * math.sin(a)))
                            for r in (16, 30, 45, 60, 80)
                            for a in (math.radians(d) for d in (0, 40, -40, 90, -90, 140, -140,
                                                                 180))))


def label_offsets(anchors, sizes, frame, offsets=_LABEL_OFFSETS, marker: float = 0.0
                  ) -> list[tuple]:
    """Pick one offset per label so labels do not overlap each other, any marker (a square of
    side ``marker`` on each anchor) or leave ``frame``.

    ``anchors`` are the points and ``sizes`` the labels' ``(width, height)``, ``frame`` is
    ``(x0, y0, x1, y1)``, all in one unit (pixels). A label at offset ``(dx, dy)`` starts at
    ``x + dx`` when ``dx >= 0`` (else ends there) and likewise in y. Each label, in order, takes
    the first offset that clashes with nothing, else the one overlapping least (area over
    earlier labels plus area outside the frame).
    """
    def box(anchor, size, off):
        x = anchor[0] + off[0] - (size[0] if off[0] < 0 else 0)
        y = anchor[1] + off[1] - (size[1] if off[1] < 0 else 0)
        return x, y, x + size[0], y + size[1]

    def overlap(a, b):
        return (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))

    half = marker / 2
    placed = [(x - half, y - half, x + half, y + half) for x, y in anchors] if marker else []
    chosen = []
    for anchor, size in zip(anchors, sizes, strict=True):
        best = None
        for off in offsets:
            b = box(anchor, size, off)
            clash = (sum(overlap(b, other) for other in placed)
                     + size[0] * size[1] - overlap(b, frame))
            if best is None or clash < best[0]:
                best = (clash, off, b)
            if clash == 0:
                break
        chosen.append(best[1])
        placed.append(best[2])
    return chosen


def _place_labels(fig, ax, points, fontsize: int = 8) -> None:
    """Annotate each point at its `label_offsets` position; a grey leader line joins a label
    that had to move away to its point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.font_manager import FontProperties

    renderer = FigureCanvasAgg(fig).get_renderer()
    font = FontProperties(size=fontsize)
    px = fig.dpi / 72  # pixels per point
    anchors = [ax.transData.transform((x, y)) for _, x, y in points]
    sizes = [renderer.get_text_width_height_descent(label, font, ismath=False)[:2]
             for label, _, _ in points]
    frame = ax.get_window_extent(renderer).extents
    offsets = [(dx * px, dy * px) for dx, dy in _LABEL_OFFSETS]
    chosen = label_offsets(anchors, sizes, frame, offsets, marker=10 * px)
    for (label, x, y), (dx, dy) in zip(points, chosen, strict=True):
        moved = (dx, dy) != offsets[0]
        ax.annotate(label, (x, y), textcoords="offset pixels", xytext=(dx, dy),
                    fontsize=fontsize, ha="left" if dx >= 0 else "right",
                    va="bottom" if dy >= 0 else "top",
                    arrowprops=dict(arrowstyle="-", color="0.6", lw=0.6) if moved else None)


def plot_quality_vs_size(reports: list[Report], path: str | Path | None = None,
                         metric: str = "perplexity"):
    """Scatter of ``metric`` against gzip size, one labelled point per model.

    Returns the matplotlib ``Figure`` (shown inline in a notebook) and writes it as a PNG to
    ``path`` when given. The matplotlib backend is left as it is.

    Example:
        >>> fig = plot_quality_vs_size(reports, "quality_vs_size.png")
    """
    from matplotlib.figure import Figure

    points = [(r.name, r.gzip_bytes, r.quality.get(metric)) for r in reports]
    points = [(name, size / 1e6, value) for name, size, value in points
              if size is not None and value is not None]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for _, size, value in points:
        ax.scatter(size, value)
    ax.set_xlabel("gzip size (MB)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs size")
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    ax.set_xlim(left=0)
    fig.tight_layout()
    _place_labels(fig, ax, points)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


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


__all__ = ["Report", "compare", "evaluate", "plot_quality_vs_size", "ratios", "write_report"]
