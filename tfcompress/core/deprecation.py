"""Old names keep working for one release, with a warning that names the new one.

Example:
    >>> calibration, data = None, [1, 2]
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     renamed_argument("data", data, "calibration", calibration)
    [1, 2]
    >>> str(caught[0].message)
    'data= is deprecated and will be removed in the next release: use calibration='
"""

from __future__ import annotations

import sys
import warnings

from tfcompress.errors import TfcompressError


def renamed_argument(old: str, old_value, new: str, new_value,
                     category: type[Warning] = FutureWarning):
    """``new_value``, or ``old_value`` (with a ``category`` warning, on the user's line) when
    only the old keyword was given; both given is an error."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TfcompressError(f"give {new} only ({old} is its deprecated name), not both")
    warnings.warn(f"{old}= is deprecated and will be removed in the next release: use {new}=",
                  category, stacklevel=caller_stacklevel())
    return old_value


def caller_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the function calling this one) of the
    first frame outside tfcompress: the user's line, so Python's default filters, which show a
    `DeprecationWarning` only for ``__main__``, show it there."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (
            frame.f_globals.get("__name__", "").split(".")[0] == "tfcompress"):
        frame, level = frame.f_back, level + 1
    return level
