"""Keep freed activation memory in the process instead of handing it back to the kernel.

glibc serves blocks above its mmap threshold (128 KiB at first, adapting up to 32 MiB) with
fresh mappings and unmaps them on free, and trims the heap's free top past twice that. A
prefill chunk's activations are megabytes each (2048 tokens of SmolLM's gate/up output: 25 MB),
so every layer faulted them back in and the kernel zeroed them page by page again: issue 3's
workload took ~80k page faults and ~0.6 s of system time on the 2-core dev machine. With the
threshold at its maximum and the heap trimmed only past 1 GiB: ~9-15k faults and ~0.3 s.
This is what the tcmalloc/jemalloc preloads recommended for CPU inference buy, without one.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once); False where that is not possible.

    A caller's own ``MALLOC_*_`` or ``GLIBC_TUNABLES`` malloc setting wins: then nothing changes.
    """
    if not sys.platform.startswith("linux") or _caller_tuned_malloc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mmap_ok


def _caller_tuned_malloc() -> bool:
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return True
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def release_free_heap() -> bool:
    """Hand the heap's free pages back to the kernel now (glibc ``malloc_trim(0)``).

    For once-off churn such as packing weights: each plain weight is freed after its packed
    copy is made, which leaves holes all over the heap that the trim threshold never returns
    (SmolLM2-135M: ~150 MB of RSS held for nothing). False where there is no glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
