"""Hand freed heap memory back to the operating system.

glibc keeps what ``free`` returns inside the process: arrays under its mmap threshold, which
grows up to 32 MB as big arrays come and go, land on the heap, so the resident memory climbs
by what each calibrated block's activations and temporaries left behind, although nothing
holds them. `release_freed_memory` asks glibc to return those pages (``malloc_trim``);
`large_arrays_off_heap` fixes the threshold at its 128 KB start (arrays above it are mapped
and unmapped on their own). Neither changes a value; both do nothing where the C library is
not glibc.

Example:
    >>> large_arrays_off_heap()      # glibc: the threshold is fixed
    True
    >>> release_freed_memory()       # after a calibrated block  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's initial threshold, kept from then on


@functools.cache
def _glibc(name: str):
    """glibc's function ``name``, or None (another C library, or none found)."""
    lib = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(lib), name) if lib else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the operating system; True when glibc released
    some (False: nothing to release, or not glibc)."""
    trim = _glibc("malloc_trim")
    return bool(trim(0)) if trim is not None else False


@functools.cache
def large_arrays_off_heap() -> bool:
    """Keep arrays over 128 KB off the heap for the rest of the process (glibc would raise
    the threshold to the largest array freed, up to 32 MB, and keep those on the heap);
    True when set. Once per process: calibration calls it before its first block."""
    mallopt = _glibc("mallopt")
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) if mallopt is not None else False
