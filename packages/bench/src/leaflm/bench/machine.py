"""What the numbers were measured on, and how much memory a phase used.

Every report carries the machine description: ratios travel between machines, absolute
figures do not.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from typing import Any

import psutil


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction sets that decide which kernel paths run (a Zen 3 and a Zen 4 both read
# "AMD EPYC"), in /proc/cpuinfo's spelling.
SIMD_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
)


def _cpu_identity(cpuinfo: str) -> tuple[str | None, str | None]:
    """("family F model M", the SIMD_FLAGS it has) from /proc/cpuinfo's text."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    family, model = fields.get("cpu family"), fields.get("model")
    ident = f"family {family} model {model}" if family and model else None
    have = set(fields.get("flags", "").split())
    return ident, " ".join(f for f in SIMD_FLAGS if f in have) or None


def describe_machine() -> dict[str, Any]:
    """CPU model (and family, model and SIMD flags), cores, RAM, OS, Python, torch/transformers versions and the GPU if any."""
    import torch
    import transformers

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            ident, simd = _cpu_identity(f.read())
    except OSError:
        ident, simd = None, None
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_id": ident,
        "cpu_simd": simd,
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        info["cuda"] = torch.version.cuda
    try:
        from importlib.metadata import version

        info["leaflm_engine"] = version("leaflm-engine")
    except Exception:
        info["leaflm_engine"] = None
    return info


class PeakMemory:
    """Peak memory of one phase: sampled process RSS on CPU, `max_memory_allocated` on CUDA.

    RSS is sampled every `interval` seconds in a thread, so it may miss sub-interval spikes;
    the resident model weights dominate anyway. Use as a context manager; read `.peak_mb`.
    """

    def __init__(self, device: str = "cpu", interval: float = 0.05) -> None:
        self.device = device
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._process = psutil.Process()
            self.peak_mb = self._process.memory_info().rss / 2**20
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)
