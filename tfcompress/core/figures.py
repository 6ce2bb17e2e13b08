"""Matplotlib figures without pyplot or a backend, shown inline by IPython: what evaluate's plots
and export's diagnosis both draw on (here in core so neither imports the other).

Example:
    >>> fig = figure(4, 3)
    >>> fig.get_size_inches().tolist(), fig.dpi
    ([4.0, 3.0], 100)
"""

from __future__ import annotations

import functools
import io

DPI = 100  # a 7-inch figure is a 700-pixel PNG: readable, and a few tens of kB


@functools.cache
def _figure_class():
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
            return buffer.getvalue()

    return NotebookFigure


def figure(width: float, height: float):
    """A matplotlib ``Figure`` (no pyplot, no backend) that IPython shows inline as a PNG when
    it is a cell's value, whether or not the notebook enabled matplotlib's inline backend."""
    return _figure_class()(figsize=(width, height), dpi=DPI)
