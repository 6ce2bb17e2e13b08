"""Plot helpers: the figure holds the numbers it was given, PNGs are written on request, the
backend is never touched, and a notebook can show the figure without pyplot."""

import matplotlib
import pytest
from matplotlib.figure import Figure

from tfcompress.errors import TfcompressError
from tfcompress.evaluate import plot_bars, plot_history, plot_points

PNG = b"\x89PNG\r\n\x1a\n"


def bar_heights(ax, horizontal=False):
    return [round(p.get_width() if horizontal else p.get_height(), 6) for p in ax.patches]


def test_bars_hold_the_values_in_order_with_their_labels(tmp_path):
    backend = matplotlib.get_backend()
    sparsity = {"block0_attn_query": 0.5, "block0_mlp_in": 0.25, "head": 0.0}
    fig = plot_bars(sparsity, ylabel="sparsity", title="zeros per layer", horizontal=True,
                    path=tmp_path / "s.png")
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and matplotlib.get_backend() == backend
    assert bar_heights(ax, horizontal=True) == [0.5, 0.25, 0.0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(sparsity)
    assert [t.get_text() for t in ax.texts] == ["0.5", "0.25", "0"]  # the values, on the bars
    assert (ax.get_xlabel(), ax.get_title()) == ("sparsity", "zeros per layer")
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG


def test_grouped_bars_one_series_per_inner_key_and_a_gap_for_a_missing_one():
    latency = {"float32": {"1 thread": 2.0, "2 threads": 1.5}, "int8": {"1 thread": 1.0}}
    ax = plot_bars(latency, ylabel="ms", fmt="{:.1f}").axes[0]
    heights = bar_heights(ax)
    assert heights[:2] == [2.0, 1.0] and heights[2] == 1.5 and heights[3] != heights[3]  # NaN
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1 thread", "2 threads"]
    assert [t.get_text() for t in ax.texts] == ["2.0", "1.0", "1.5", ""]
    # the two bars of one group sit side by side around the group's tick
    centres = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    assert centres[0] < 0 < centres[2] and centres[1] < 1 < centres[3]


def test_bars_refuse_empty_or_mixed_values():
    with pytest.raises(TfcompressError, match="values is empty"):
        plot_bars({})
    with pytest.raises(TfcompressError, match="every label to a number"):
        plot_bars({"a": 1.0, "b": {"x": 2.0}})


def test_history_draws_each_key_at_its_step():
    curves = {"loss": [3.0, 2.0, 1.5], "perplexity": [20.0, 12.0, 9.0]}
    ax = plot_history(curves, ["loss"], every=5, xlabel="step").axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [5, 10, 15] and list(line.get_ydata()) == [3.0, 2.0, 1.5]
    assert ax.get_xlabel() == "step"

    class History:  # what keras.Model.fit returns
        history = curves

    assert len(plot_history(History()).axes[0].get_lines()) == 2
    with pytest.raises(TfcompressError, match=r"keys must be among \['loss', 'perplexity'\]"):
        plot_history(curves, ["val_loss"])
    with pytest.raises(TfcompressError, match="every must be a positive integer, got 0"):
        plot_history(curves, every=0)
    with pytest.raises(TfcompressError, match="got list"):
        plot_history([1.0, 2.0])


def test_points_are_labelled_and_the_figure_shows_itself_as_png():
    fig = plot_points({"int8": (8.0, 0.01), "nf4": (4.5, 0.09)}, xlabel="bits per weight",
                      ylabel="error", logy=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["int8", "nf4"]
    assert [tuple(c.get_offsets()[0]) for c in ax.collections] == [(8.0, 0.01), (4.5, 0.09)]
    assert ax.get_yscale() == "log"
    # IPython calls _repr_png_ for a cell's value: no inline backend or pyplot needed
    assert fig._repr_png_()[:8] == PNG


def test_a_tiny_difference_does_not_fill_the_height_of_a_scatter():
    ax = plot_points({"keras": (0.17, 90.085), "tflite": (0.09, 90.084)}).axes[0]
    low, high = ax.get_ylim()
    assert low == pytest.approx(90.0845 * 0.98) and high == pytest.approx(90.0845 * 1.02)
    ax = plot_points({"a": (1.0, 10.0), "b": (2.0, 20.0)}).axes[0]
    assert ax.get_ylim()[0] < 10.0 < 20.0 < ax.get_ylim()[1] < 25.0  # a real spread is kept
