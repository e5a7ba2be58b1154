"""Freed activation memory stays in the process: re-allocating it costs no page faults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("glibc malloc tuning is Linux-only", allow_module_level=True)

# Eight 8 MiB activations allocated, freed, allocated again: the second round's page faults.
PROBE = """
import resource, sys, torch
from leaflm.kernels.cpu import malloc_tuning
tuned = malloc_tuning.retain_freed_memory() if sys.argv[1] == "tune" else None
def round_trip():
    ts = [torch.ones(2 * 1024 * 1024) for _ in range(8)]
    del ts
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_trip()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_reallocation_is_fault_free_once_tuned():
    tuned, tuned_faults = _faults("tune")
    if tuned != "True":
        pytest.skip("this C library takes no mallopt")
    _, plain_faults = _faults("plain")
    pages = 8 * 8 * 1024 * 1024 // 4096
    assert plain_faults > pages // 2  # glibc's defaults hand the memory back and re-fault it
    assert tuned_faults <= pages // 4


def test_callers_own_malloc_setting_wins(monkeypatch):
    from leaflm.kernels.cpu import malloc_tuning

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert malloc_tuning._caller_tuned_malloc()
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "0")
    assert malloc_tuning._caller_tuned_malloc()
