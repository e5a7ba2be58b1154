"""Freed activation memory stays in the process: re-allocating it costs no page faults."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("glibc malloc tuning is Linux-only", allow_module_level=True)

# Eight 8 MiB activations allocated and freed, round after round: the median page faults of a
# round after the first. The probe calls posix_memalign(64) as torch's CPU allocator does, but
# directly: torch's own small allocations between tensors pin the heap top at random, which made
# a torch-level probe flaky in both modes. Even so, glibc re-lays the heap out once in a while
# early on (one round re-faults a few blocks), hence the median.
ROUNDS = 7
PROBE = f"""
import ctypes, resource, sys
from leaflm.kernels.cpu import malloc_tuning
tuned = malloc_tuning.retain_freed_memory() if sys.argv[1] == "tune" else None
libc = ctypes.CDLL(None)
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 8 * 1024 * 1024
def round_trip():
    blocks = [ctypes.c_void_p() for _ in range(8)]
    for block in blocks:
        assert libc.posix_memalign(ctypes.byref(block), 64, SIZE) == 0
        ctypes.memset(block, 1, SIZE)
    for block in blocks:
        libc.free(block)
faults = []
for _ in range({ROUNDS}):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    round_trip()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, *faults)
"""


def _faults(mode: str) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], statistics.median(int(n) for n in out[2:])  # out[1]: the first, cold round


def test_reallocation_is_fault_free_once_tuned():
    tuned, tuned_faults = _faults("tune")
    if tuned != "True":
        pytest.skip("this C library takes no mallopt")
    _, plain_faults = _faults("plain")
    pages = 8 * 8 * 1024 * 1024 // 4096
    assert plain_faults > pages // 2  # glibc's defaults hand the memory back and re-fault it
    assert tuned_faults <= pages // 8


def test_callers_own_malloc_setting_wins(monkeypatch):
    from leaflm.kernels.cpu import malloc_tuning

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert malloc_tuning._caller_tuned_malloc()
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "0")
    assert malloc_tuning._caller_tuned_malloc()
