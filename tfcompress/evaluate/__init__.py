"""Measurement: size (raw and gzip), latency, perplexity/accuracy, comparison tables, plots."""

from tfcompress.core.latency import (
    interleaved_latency,
    keras_forward,
    keras_latency,
    time_callable,
)
from tfcompress.core.modules import make_callable
from tfcompress.core.quality import lm_quality, token_stats
from tfcompress.evaluate.plots import plot_bars, plot_history, plot_points, plot_quality_vs_size
from tfcompress.evaluate.report import Report, compare, evaluate, ratios, write_report
from tfcompress.evaluate.size import file_sizes, keras_file_sizes, param_counts

make_callable(__name__, evaluate)

__all__ = [
    "Report",
    "compare",
    "evaluate",
    "file_sizes",
    "interleaved_latency",
    "keras_file_sizes",
    "keras_forward",
    "keras_latency",
    "lm_quality",
    "param_counts",
    "plot_bars",
    "plot_history",
    "plot_points",
    "plot_quality_vs_size",
    "ratios",
    "time_callable",
    "token_stats",
    "write_report",
]
