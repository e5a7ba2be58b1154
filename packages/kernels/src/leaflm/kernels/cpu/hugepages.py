"""Back large CPU buffers (the packed weights) with transparent huge pages.

A decode step streams every weight: hundreds of MB read through 4 KiB pages miss the TLB at
every page. Asking the kernel for 2 MiB pages on them measured ~5% faster decode GEMMs on
the 2-core dev machine (THP in `madvise` mode, as most distributions ship it). Linux only;
anything else, or a kernel that refuses, leaves the buffer as it was. The KV cache was
advised too (~16% faster paged attention in a microbenchmark, on a cache already faulted
in) and no longer is: its pages fault in mid-step, where an advised fault's synchronous
compaction cost more than the reads won (see `leaflm.engine.kv_cache`); weights are
touched once, at load.

Only the 2 MiB-aligned interior of a buffer can be advised, so a weight packed on its own
keeps its unaligned ends (up to 2 MiB each) on small pages: of SmolLM2-135M's 121 packed
weights (538 MB) only ~300 MB got huge pages. Packing inside :func:`weight_arena` places
the weights side by side in a few aligned chunks instead, all of them on huge pages
(batch-1 decode GEMMs ~4% faster on the 2-core dev VM).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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


_ARENA_CHUNK = 32 * 1024 * 1024
_ALIGN = 64  # a cache line: AVX-512 loads of a panel never straddle two


class _Arena:
    """Bump allocation out of huge-page chunks; a tensor keeps its chunk alive."""

    def __init__(self) -> None:
        self.chunk: torch.Tensor | None = None
        self.used = 0

    def empty(self, nbytes: int) -> torch.Tensor:
        nbytes = -(-nbytes // _ALIGN) * _ALIGN
        if nbytes > _ARENA_CHUNK // 4:  # big enough to be a chunk of its own
            return _aligned_chunk(nbytes)[:nbytes]
        if self.chunk is None or self.used + nbytes > self.chunk.numel():
            self.chunk, self.used = _aligned_chunk(_ARENA_CHUNK), 0
        out = self.chunk[self.used : self.used + nbytes]
        self.used += nbytes
        return out


_arena: _Arena | None = None


def _aligned_chunk(nbytes: int) -> torch.Tensor:
    """``nbytes`` untouched bytes starting on a 2 MiB boundary, advised before the first touch."""
    raw = torch.empty(nbytes + _HUGE, dtype=torch.uint8)
    start = -raw.data_ptr() % _HUGE
    chunk = raw[start : start + -(-nbytes // _HUGE) * _HUGE]
    advise_range(chunk.data_ptr(), chunk.numel())
    return chunk[:nbytes]


@contextmanager
def weight_arena() -> Iterator[None]:
    """While open, :func:`empty` places buffers side by side in huge-page chunks."""
    global _arena
    previous, _arena = _arena, _Arena()
    try:
        yield
    finally:
        _arena = previous


def empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor on huge pages (in the open :func:`weight_arena`, if any)."""
    nbytes = dtype.itemsize * int(torch.Size(shape).numel())
    if _arena is None:
        t = torch.empty(shape, dtype=dtype)
        advise_tensor(t)
        return t
    return _arena.empty(nbytes)[:nbytes].view(dtype).view(shape)
