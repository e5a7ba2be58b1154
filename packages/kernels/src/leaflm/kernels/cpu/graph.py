"""CPU graphs: record the C kernel calls of one forward pass, then replay them without Python.

A batch-1 decode step of SmolLM2-135M makes ~300 C kernel calls; the Python around them
(modules, dispatch, tensor checks and allocations, ctypes argument conversion) cost ~4 ms
of a ~18 ms step on the 2-core dev VM, while the GEMVs themselves are bound by memory
bandwidth. This is the CPU analogue of a CUDA graph: while :func:`capture` is open, every
call into the kernel library is executed and also appended to a tape, with its arguments
(raw pointers, sizes) as they were; :meth:`CpuGraph.replay` makes the same calls again. The
caller keeps the inputs in the same tensors and overwrites them in place before a replay.

A tape is only right if the pass did nothing but call kernels and make views or empty
tensors: any other torch op (an add, an index, a copy, ``.item()``) would not be replayed.
A ``TorchDispatchMode`` watches every aten op while recording; anything else raises
:class:`GraphUnsafe` and the caller runs that forward eagerly instead. The mode also keeps
every tensor allocated during the capture alive, so the recorded pointers stay valid.
Work that has no kernel (a lookup in a quantized embedding table, say) can still ride in a
graph as a :func:`python_step`: a closure that is run at capture and again at each replay.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _ThreadState(threading.local):
    """Per thread: a server's engine thread may capture while another thread calls kernels
    (a second engine, a reference run), whose calls must not land on its tape."""

    tape: list[tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
    exempt = 0  # > 0 inside a python_step: its torch ops are replayed by the step itself


_state = _ThreadState()

_ALLOCATING = {
    torch.ops.aten.empty.memory_format,
    torch.ops.aten.empty_like.default,
    torch.ops.aten.empty_strided.default,
}


class GraphUnsafe(RuntimeError):
    """The recorded pass did work outside the kernel library, so a replay would skip it."""


class _Recordable:
    """A library function that, while a capture is open, also appends its call to the tape."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        tape = _state.tape
        if tape is not None:
            tape.append((self.fn, args))
        return self.fn(*args)


def make_recordable(lib: ctypes.CDLL, names: list[str]) -> None:
    """Route calls to each declared function of ``lib`` through the recorder."""
    for name in names:
        setattr(lib, name, _Recordable(getattr(lib, name)))


def python_step(fn: Callable[[], object]) -> None:
    """Run ``fn()`` now, and again at every replay of an open capture.

    For work without a kernel: ``fn`` reads its inputs from tensors the graph keeps (updated
    in place before a replay) and writes its result into a tensor allocated before it, since
    anything it allocates is gone after it returns.
    """
    tape = _state.tape
    if tape is not None:
        tape.append((fn, ()))
    # Kernel calls inside `fn` are not recorded: they write into its temporaries, which are
    # freed when it returns; `fn` itself makes them again at every replay.
    _state.tape = None
    _state.exempt += 1
    try:
        fn()
    finally:
        _state.exempt -= 1
        _state.tape = tape


def _aliases(out: Any, args: tuple[Any, ...]) -> bool:
    """Whether a view op's result shares its input's memory: ``reshape`` is marked a view but
    copies when the strides do not allow one (a replay would then read the stale copy)."""
    base = args[0] if args else None
    if not isinstance(out, torch.Tensor) or not isinstance(base, torch.Tensor):
        return True  # a list of views (split, unbind) or no tensor input: nothing to copy
    return out.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()


class _Guard(TorchDispatchMode):
    """Allows views and allocations (kept alive); anything else makes the capture unsafe."""

    def __init__(self, keep: list[torch.Tensor]) -> None:
        super().__init__()
        self.keep = keep
        self.refused: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if _state.exempt:
            return out
        if func in _ALLOCATING:
            self.keep.append(out)
        elif self.refused is None and not (func.is_view and _aliases(out, args)):
            self.refused = str(func)
        return out


class ReplayProfile:
    """Wall time of each kernel over the replays made inside :func:`profile`.

    Where a graph step's milliseconds go (GEMMs, attention, KV writes, ...) without a
    profiler that only sees Python frames: calls are grouped by the kernel's name.
    """

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.replays = 0

    def per_replay_ms(self) -> dict[str, float]:
        """Milliseconds a replay spends in each kernel, the largest first."""
        n = max(self.replays, 1)
        ranked = sorted(self.seconds.items(), key=lambda kv: kv[1], reverse=True)
        return {name: t / n * 1e3 for name, t in ranked}


_profiles: list[ReplayProfile] = []  # the open profile (at most one), read by every thread


@contextmanager
def profile() -> Iterator[ReplayProfile]:
    """Time every kernel call of every replay (in any thread) until the block ends."""
    if _profiles:
        raise RuntimeError("a CPU graph profile is already open")
    prof = ReplayProfile()
    _profiles.append(prof)
    try:
        yield prof
    finally:
        _profiles.clear()


class CpuGraph:
    """A recorded pass: its kernel calls, the tensors they point into, and its output."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.tensors: list[torch.Tensor] = []
        self.output: Any = None

    def replay(self) -> Any:
        if _profiles:
            return self._timed_replay(_profiles[0])
        for fn, args in self.calls:
            fn(*args)
        return self.output

    def _timed_replay(self, prof: ReplayProfile) -> Any:
        clock = time.perf_counter
        for fn, args in self.calls:
            start = clock()
            fn(*args)
            name = getattr(fn, "__name__", type(fn).__name__)
            prof.seconds[name] += clock() - start
            prof.calls[name] += 1
        prof.replays += 1
        return self.output


@contextmanager
def capture() -> Iterator[CpuGraph]:
    """Record the kernel calls of the block into a :class:`CpuGraph` (which the block fills in
    with its ``output``); raises :class:`GraphUnsafe` if the block did anything else."""
    if _state.tape is not None:
        raise RuntimeError("a CPU graph capture is already open in this thread")
    graph = CpuGraph()
    guard = _Guard(graph.tensors)
    _state.tape = graph.calls
    try:
        with guard:
            yield graph
    finally:
        _state.tape = None
    if guard.refused is not None:
        raise GraphUnsafe(f"{guard.refused} ran outside the kernel library")
    if not graph.calls:
        raise GraphUnsafe("no kernel calls were recorded")
