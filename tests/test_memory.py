"""`tfcompress.core.memory.release_freed_memory`: freed heap pages go back to the system."""

import sys

import numpy as np
import pytest

from benchmarks._rss import current_gb
from tfcompress.core.memory import large_arrays_off_heap, release_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_leaves_the_process():
    # 3,000 arrays of 64 KB (under glibc's mmap threshold: on the heap), the last kept so
    # the heap's top stays in use and free() alone cannot shrink it
    chunks = [np.ones(8192) for _ in range(3000)]
    last = chunks[-1]
    del chunks
    held = current_gb()
    assert release_freed_memory()
    assert held - current_gb() > 0.1  # ~0.2 GB freed but resident until released
    assert last.sum() == 8192


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_arrays_leave_the_process_when_freed():
    large_arrays_off_heap()
    big = np.ones(2**21)
    del big  # 16 MB freed: glibc alone would now keep arrays up to 16 MB on the heap
    chunks = [np.ones(2**17) for _ in range(200)]  # 1 MB each, 0.2 GB
    last = chunks[-1]
    held = current_gb()
    del chunks
    assert held - current_gb() > 0.1  # unmapped by free() itself, no trim
    assert last.sum() == 2**17
