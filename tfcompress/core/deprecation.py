"""Old names keep working for one release, with a warning that names the new one.

Example:
    >>> calibration = renamed_argument("data", data, "calibration", calibration)
"""

from __future__ import annotations

import warnings

from tfcompress.errors import TfcompressError


def renamed_argument(old: str, old_value, new: str, new_value):
    """``new_value``, or ``old_value`` (with a `FutureWarning`) when only the old keyword was
    given; both given is an error."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TfcompressError(f"give {new} only ({old} is its deprecated name), not both")
    warnings.warn(f"{old}= is deprecated and will be removed in the next release: use {new}=",
                  FutureWarning, stacklevel=3)
    return old_value
