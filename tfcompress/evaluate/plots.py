"""Plots of what was measured: quality against size, one value per layer or per mode, curves.

Every helper returns a matplotlib ``Figure`` (a notebook shows it inline when it is the cell's
last value) and writes a PNG when given ``path``. None touches pyplot or the backend, so they
work the same in a notebook, a script and a headless CI job.

Example:
    >>> plot_quality_vs_size(reports, "quality_vs_size.png")
    >>> plot_bars({p: r["sparsity"] for p, r in sparsity_summary(model)["layers"].items()},
    ...           ylabel="sparsity", title="zeros per layer", horizontal=True)
    >>> plot_history(history, ["loss", "val_loss"])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from tfcompress.core.figures import DPI, figure
from tfcompress.errors import TfcompressError


def _axes(fig, title: str, xlabel: str = "", ylabel: str = ""):
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return ax


def _finish(fig, path: str | Path | None, layout: bool = True):
    if layout:
        fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=DPI)
    return fig

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


def plot_points(points: Mapping[str, tuple[float, float]], *, xlabel: str = "",
                ylabel: str = "", title: str = "", path: str | Path | None = None,
                logy: bool = False):
    """Scatter of labelled ``{label: (x, y)}`` points, labels placed so they do not overlap.

    Example:
        >>> fig = plot_points({"int8": (8.0, 0.01), "int4": (4.25, 0.09)},
        ...                   xlabel="bits per weight", ylabel="relative error")
    """
    rows = [(label, float(x), float(y)) for label, (x, y) in points.items()]
    fig = figure(7, 4.5)
    ax = _axes(fig, title, xlabel, ylabel)
    for _, x, y in rows:
        ax.scatter(x, y)
    ax.margins(0.15)
    if logy:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", useOffset=False)
        low, high = ax.get_ylim()
        middle, least = (low + high) / 2, 0.02 * abs(low + high) / 2
        if high - low < 2 * least:  # a 0.01 % difference must not fill the plot's height
            ax.set_ylim(middle - least, middle + least)
    ax.set_xlim(left=0)
    fig.tight_layout()
    _place_labels(fig, ax, rows)  # in the final pixels, so no layout after this
    return _finish(fig, path, layout=False)


def plot_quality_vs_size(reports: list, path: str | Path | None = None,
                         metric: str = "perplexity"):
    """Scatter of ``metric`` against gzip size, one labelled point per `Report`.

    Returns the matplotlib ``Figure`` (shown inline in a notebook) and writes it as a PNG to
    ``path`` when given. The matplotlib backend is left as it is.

    Example:
        >>> fig = plot_quality_vs_size(reports, "quality_vs_size.png")
    """
    points = {r.name: (r.gzip_bytes / 1e6, r.quality[metric]) for r in reports
              if r.gzip_bytes is not None and r.quality.get(metric) is not None}
    return plot_points(points, xlabel="gzip size (MB)", ylabel=metric,
                       title=f"{metric} vs size", path=path)


def plot_bars(values: Mapping[str, float] | Mapping[str, Mapping[str, float]], *,
              ylabel: str = "", title: str = "", path: str | Path | None = None,
              horizontal: bool = False, fmt: str = "{:.3g}"):
    """Bar chart of ``{label: value}``, or grouped bars of ``{label: {series: value}}``, each
    bar labelled with its value (``fmt``). ``horizontal`` suits long labels such as layer paths.

    Example:
        >>> fig = plot_bars({"float16": 812.0, "int8": 421.5}, ylabel="kB", title="file size")
        >>> fig = plot_bars({"float32": {"1": 2.1, "2": 1.4}, "int8": {"1": 1.2, "2": 0.9}},
        ...                 ylabel="ms", title="latency per thread count")
    """
    if not values:
        raise TfcompressError("values is empty: give at least one {label: value}")
    grouped = [isinstance(v, Mapping) for v in values.values()]
    if any(grouped) and not all(grouped):
        raise TfcompressError("values must map every label to a number, or every label to "
                              f"{{series: number}}; got {dict(values)!r}")
    table = values if all(grouped) else {label: {"": v} for label, v in values.items()}
    labels = list(table)
    series = list(dict.fromkeys(s for row in table.values() for s in row))
    n, width = len(labels), 0.8 / len(series)
    long = max(len(label) for label in labels)
    fig = (figure(7, max(2.5, 0.28 * n * len(series) + 1.2)) if horizontal
           else figure(max(5.0, 0.5 * n * len(series) + 2), 3.5 + 0.04 * long))
    ax = _axes(fig, title, *((ylabel, "") if horizontal else ("", ylabel)))
    for i, name in enumerate(series):
        heights = [float(table[label].get(name, math.nan)) for label in labels]
        where = [k + (i - (len(series) - 1) / 2) * width for k in range(n)]
        bars = (ax.barh if horizontal else ax.bar)(where, heights, width, label=name or None)
        ax.bar_label(bars, [fmt.format(h) if not math.isnan(h) else "" for h in heights],
                     fontsize=7, padding=2)
    if horizontal:
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.invert_yaxis()  # first label on top, as in a table
        ax.margins(x=0.12)
    else:
        tilt = long > 10  # long labels would run into each other
        ax.set_xticks(range(n), labels, fontsize=8, rotation=30 if tilt else 0,
                      ha="right" if tilt else "center")
        ax.margins(y=0.12)
    if series != [""]:
        ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_history(history, keys: Sequence[str] | None = None, *, every: int = 1,
                 xlabel: str = "epoch", ylabel: str = "", title: str = "",
                 path: str | Path | None = None, logy: bool = False):
    """Curves of a Keras ``History`` (or any ``{name: [values]}``), one line per key; the
    ``i``-th value is drawn at ``every * (i + 1)`` (e.g. a check every 5 steps).

    Example:
        >>> history = model.fit(data, epochs=5)
        >>> plot_history(history, ["loss"], title="training loss")
    """
    curves = getattr(history, "history", history)
    if not isinstance(curves, Mapping):
        raise TfcompressError("history must be a keras History or a {name: [values]} mapping, "
                              f"got {type(history).__name__}")
    keys = list(curves) if keys is None else list(keys)
    missing = [k for k in keys if k not in curves]
    if missing or not keys:
        raise TfcompressError(f"keys must be among {sorted(curves)}, got {keys}")
    if not isinstance(every, int) or every < 1:
        raise TfcompressError(f"every must be a positive integer, got {every!r}")
    from matplotlib.ticker import MaxNLocator

    fig = figure(7, 3.5)
    ax = _axes(fig, title, xlabel, ylabel)
    for key in keys:
        ys = [float(v) for v in curves[key]]
        ax.plot([every * (i + 1) for i in range(len(ys))], ys, marker="o", ms=3, label=key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if logy:
        ax.set_yscale("log")
    if len(keys) > 1:
        ax.legend(fontsize=8)
    return _finish(fig, path)


__all__ = ["figure", "label_offsets", "plot_bars", "plot_history", "plot_points",
           "plot_quality_vs_size"]
