"""Host (CPU-side) memory settings that make training steps faster.

A training step frees and re-allocates the same large activation buffers every
iteration. With glibc's defaults, buffers above the dynamic mmap threshold are mapped
and unmapped each time, so every step pays page faults for memory it just returned;
measured here on a ResNet-18 step this cost about a quarter of the step time (see
docs/benchmarks.md). Keeping freed memory in the heap removes that cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems
INT_MAX = 2**31 - 1


@functools.cache
def tune_glibc_malloc() -> bool:
    """Serve large allocations from the heap and keep freed memory for reuse (glibc on
    Linux only; elsewhere a no-op). Returns whether the settings were applied."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1
    ok &= mallopt(M_TOP_PAD, 1 << 30) == 1
    return bool(ok)
