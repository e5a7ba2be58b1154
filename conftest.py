"""Session-wide memory check for the whole test suite (every package's tests run under it).

A sampler thread sums the RSS of the pytest process and all its descendants (servers, CLI
runs, pip) every 0.2 s; `getrusage` adds the exact per-process maxima (`RUSAGE_SELF` for
pytest, `RUSAGE_CHILDREN` for the largest waited-for descendant, which on Linux starts from
the parent's RSS when it was forked, so it never reads below pytest's at that moment). The terminal summary
prints the figures, and the session fails when the peak passes `LEAFLM_TEST_PEAK_RSS_GIB`
(default 4): the suite must fit on a machine that is also running other work.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading

import pytest

try:
    import psutil
except ImportError:  # e.g. `nox -s gpu` in a bare GPU image: getrusage's maxima only
    psutil = None

LIMIT_GIB = float(os.environ.get("LEAFLM_TEST_PEAK_RSS_GIB", "4"))
_GIB = 2**30


class _TreeSampler:
    """Peak of the summed RSS of this process and its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self.peak_test = ""  # the test running when the peak was sampled
        self._root = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        total, count = self._root.memory_info().rss, 1
        for child in self._root.children(recursive=True):
            try:
                total += child.memory_info().rss
                count += 1
            except psutil.Error:  # exited between listing and reading
                pass
        if total > self.peak:
            self.peak, self.peak_processes, self.peak_test = total, count, _current_test

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error):  # the tree changed under the listing
                self._sample()

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _maxrss_bytes(who: int) -> int:
    kib_or_bytes = resource.getrusage(who).ru_maxrss
    return kib_or_bytes if sys.platform == "darwin" else kib_or_bytes * 1024


_sampler: _TreeSampler | None = None
_report: list[str] = []
_current_test = ""


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    global _current_test
    _current_test = nodeid


def pytest_sessionstart(session: pytest.Session) -> None:
    global _sampler
    if psutil is not None:
        _sampler = _TreeSampler()
        _sampler.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    tree, processes = 0, 0
    if _sampler is not None:
        _sampler.stop()
        tree, processes = _sampler.peak, _sampler.peak_processes
    self_peak = _maxrss_bytes(resource.RUSAGE_SELF)
    child_peak = _maxrss_bytes(resource.RUSAGE_CHILDREN)
    peak = max(tree, self_peak, child_peak)
    sampled = (
        f"process tree {tree / _GIB:.2f} GiB summed over {processes} processes (sampled "
        f"every {_sampler.interval:g} s{', during ' + _sampler.peak_test if _sampler.peak_test else ''})"
        if _sampler is not None
        else "process tree not sampled (no psutil)"
    )
    _report[:] = [
        f"peak RSS of the test session: {peak / _GIB:.2f} GiB (limit {LIMIT_GIB:g} GiB): "
        f"{sampled}, pytest {self_peak / _GIB:.2f} GiB, "
        f"largest child {child_peak / _GIB:.2f} GiB (getrusage, from its fork)"
    ]
    if peak > LIMIT_GIB * _GIB:
        _report.append(
            f"FAILED: the test session peaked at {peak / _GIB:.2f} GiB RSS, over the "
            f"{LIMIT_GIB:g} GiB limit (LEAFLM_TEST_PEAK_RSS_GIB)"
        )
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    for i, line in enumerate(_report):
        terminalreporter.write_line(line, red=i > 0, bold=True)
