"""Back large CPU buffers (packed weights, the KV cache) with transparent huge pages.

A decode step streams every weight and the whole live KV cache: hundreds of MB read through
4 KiB pages miss the TLB at every page. Asking the kernel for 2 MiB pages on those buffers
measured ~16% faster paged attention and ~5% faster decode GEMMs on the 2-core dev machine
(THP in `madvise` mode, as most distributions ship it). Linux only; anything else, or a
kernel that refuses, leaves the buffer as it was.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import torch

_HUGE = 2 * 1024 * 1024
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25  # Linux 6.1+: back already-touched memory with huge pages now


@functools.cache
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_range(address: int, nbytes: int) -> bool:
    """Ask for huge pages on the 2 MiB-aligned part of ``[address, address + nbytes)``."""
    madvise = _madvise()
    start = -(-address // _HUGE) * _HUGE
    end = (address + nbytes) // _HUGE * _HUGE
    if madvise is None or end <= start:
        return False
    ok = madvise(start, end - start, _MADV_HUGEPAGE) == 0
    return madvise(start, end - start, _MADV_COLLAPSE) == 0 and ok


def advise_tensor(t: torch.Tensor) -> bool:
    """:func:`advise_range` over a CPU tensor's memory (plain or oneDNN-packed)."""
    if t.device.type != "cpu":
        return False
    if t.is_mkldnn:
        return advise_range(torch.ops.mkldnn.data_ptr(t), torch.ops.mkldnn._nbytes(t))
    return advise_range(t.data_ptr(), t.untyped_storage().nbytes())
