"""Imports of the optional dependencies, each failing with the extra that provides it.

Example:
    >>> gguf = require("gguf", extra="llm", feature="load_gguf")
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``import module``, or an ImportError saying which ``tfcompress[extra]`` to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{feature} needs the optional package {module.split('.')[0]!r}: "
            f"pip install 'tfcompress[{extra}]' (or, from a source checkout, pip install "
            f"'.[{extra}]')"
        ) from err
