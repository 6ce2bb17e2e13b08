"""Progress of long work: Keras's bar on a terminal, plain lines in a log, and `print_msg`,
the one way the library prints (as Keras's ``fit`` does).

Keras's ``Progbar`` writes ANSI colour codes and carriage returns even when the output goes
to a file or CI log; there `progress_bar` prints a plain line instead, at most every
`LOG_EVERY_S` seconds and at the end.

Example:
    >>> bar = progress_bar(len(blocks), unit_name="block")
    >>> for block in blocks:
    ...     bar.add(1)
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Iterator

LOG_EVERY_S = 5.0
logger = logging.getLogger("tfcompress")


def print_msg(message: str) -> None:
    """Write a progress or result line as Keras's own ``io_utils.print_msg`` does: to stdout, or
    at INFO to the ``tfcompress`` logger after ``keras.config.disable_interactive_logging()``
    (callers write only when their ``verbose`` says so).

    Example:
        >>> keras.config.enable_interactive_logging()     # Keras's default
        >>> print_msg("export: 3 of 4 layers")
        export: 3 of 4 layers
        >>> keras.config.disable_interactive_logging()    # now to the tfcompress logger
        >>> print_msg("export: 4 of 4 layers")
    """
    import keras

    if not keras.config.is_interactive_logging_enabled():
        logger.info(message)
        return
    sys.stdout.write(f"{message}\n")
    sys.stdout.flush()


class LogProgress:
    """``Progbar``'s ``add`` / ``update`` as plain lines: ``block 3/12 (4.1 s, ~12 s left)``."""

    def __init__(self, target: int, verbose: int = 1, unit_name: str = "step"):
        self.target, self.verbose, self.unit = int(target), verbose, unit_name
        self.current, self.start, self.shown = 0, time.perf_counter(), 0.0

    def update(self, current: int, values=None, finalize: bool | None = None) -> None:
        self.current = int(current)
        now = time.perf_counter() - self.start
        done = self.current >= self.target
        if not self.verbose or (not done and now - self.shown < LOG_EVERY_S):
            return
        self.shown = now
        left = now / max(self.current, 1) * (self.target - self.current)
        print_msg(f"{self.unit} {self.current}/{self.target} ({now:.1f} s"
                  f"{'' if done else f', ~{left:.0f} s left'})")

    def add(self, n: int, values=None) -> None:
        self.update(self.current + n)


def progress_bar(target: int, verbose: int = 1, unit_name: str = "step"):
    """Keras's ``Progbar`` when stdout is a terminal, else a `LogProgress`."""
    if sys.stdout.isatty():
        import keras

        return keras.utils.Progbar(target, verbose=verbose, unit_name=unit_name)
    return LogProgress(target, verbose, unit_name)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow what a library prints inside the block (ai_edge_quantizer's tqdm bars and size
    lines on every export); errors still propagate."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
