"""`mp`: one spawned worker process per tensor-parallel rank on this node.

Per step the driver pickles the laid-out batch (`StepInput`) once and writes those bytes to
each rank's pipe: one message per rank per step, a few KB for decode steps. Rank 0 sends
back the logits rows as a small header and then the raw float32 bytes, which the driver
reads straight into a fresh array (no pickling of the rows: 12 MB a step at 64 sequences of a
49k vocabulary); other ranks answer only when they fail.
While waiting the driver also watches every worker's process sentinel, so a worker that
dies (killed, OOM) fails the step at once instead of hanging in a collective.

No worker outlives the driver: `shutdown`, garbage collection of the executor and
interpreter exit (a `weakref.finalize`) end them; if the driver dies without cleanup
(SIGKILL, SIGTERM without handler) every worker sees its pipe close or its parent change and
exits; workers ignore SIGINT so Ctrl-C reaches only the driver, which then shuts them down.

A `WorkerPool` (`with WorkerPool(2): ...`) keeps spawned processes between engines: an
engine built inside it binds idle pool processes to its ranks and hands them back, reset,
at shutdown. Spawning (a fresh interpreter importing torch) dominates a small engine's
start-up, so test suites that build many TP engines share one pool.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import pickle
import signal
import socket
import threading
import time
import traceback
import weakref
from typing import Any

import numpy as np
import torch

from leaflm.engine.config import ModelConfig
from leaflm.engine.executor.base import Executor, WorkerFailedError
from leaflm.engine.executor.cpu_binding import rank_cores
from leaflm.engine.scheduler import SchedulerOutput
from leaflm.engine.step_input import build_step_input

STARTUP_TIMEOUT_S = 600.0
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out (bound to port 0), for the process-group rendezvous."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def worker_devices(model_config: ModelConfig, world_size: int) -> list[torch.device]:
    if model_config.device.type == "cuda":
        first = model_config.device.index or 0
        return [torch.device("cuda", first + r) for r in range(world_size)]
    return [torch.device("cpu")] * world_size


def _spawn() -> tuple[Any, mpc.Connection]:
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(
        target=worker_main, args=(child,), name="leaflm-tp-worker", daemon=True
    )
    proc.start()
    child.close()
    return proc, parent


def _send(conn: mpc.Connection, method: str, args: tuple[Any, ...] = (), reply: bool = True):
    conn.send_bytes(pickle.dumps((method, args, reply), protocol=_PROTOCOL))


def _stop(procs: list[Any], conns: list[mpc.Connection], grace_s: float = 5.0) -> None:
    """Ask every worker to exit, then terminate, then kill whatever is left."""
    for conn in conns:
        with contextlib.suppress(OSError):
            _send(conn, "exit", reply=False)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()


class WorkerPool:
    """Idle spawned worker processes that engines built inside `with pool:` reuse."""

    _current: WorkerPool | None = None

    def __init__(self, size: int) -> None:
        self.idle: list[tuple[Any, mpc.Connection]] = [_spawn() for _ in range(size)]
        self._finalizer = weakref.finalize(self, _stop_all, self.idle)

    def take(self, n: int) -> list[tuple[Any, mpc.Connection]]:
        alive = [(p, c) for p, c in self.idle if p.is_alive()]
        taken, self.idle[:] = alive[:n], alive[n:]
        return taken

    def give_back(self, workers: list[tuple[Any, mpc.Connection]]) -> None:
        self.idle.extend(workers)
        if not self._finalizer.alive:  # the pool closed while an engine held these
            _stop_all(self.idle)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> WorkerPool:
        WorkerPool._current = self
        return self

    def __exit__(self, *exc: object) -> None:
        WorkerPool._current = None
        self.close()


def _stop_all(workers: list[tuple[Any, mpc.Connection]]) -> None:
    _stop([p for p, _ in workers], [c for _, c in workers])
    workers.clear()


def _finish(
    procs: list[Any], conns: list[mpc.Connection], pool: WorkerPool | None, state: dict
) -> None:
    """Executor end: hand healthy workers back to the pool (reset), else stop them."""
    if pool is not None and not state.get("failed"):
        try:
            for conn in conns:
                _send(conn, "release")
            for conn in conns:
                if not conn.poll(30.0):
                    raise TimeoutError
                status, _ = pickle.loads(conn.recv_bytes())
                if status != "ok":
                    raise RuntimeError
        except (OSError, EOFError, TimeoutError, RuntimeError):
            _stop(procs, conns, grace_s=0.5)
            return
        pool.give_back(list(zip(procs, conns, strict=True)))
        return
    _stop(procs, conns, grace_s=0.5 if state.get("failed") else 5.0)


class MultiprocExecutor(Executor):
    def __init__(self, model_config: ModelConfig, world_size: int) -> None:
        self.world_size = world_size
        self.execute_seconds = 0.0  # driver time in execute_model (benchmarks)
        pool = WorkerPool._current
        workers = pool.take(world_size) if pool is not None else []
        workers += [_spawn() for _ in range(world_size - len(workers))]
        self.procs = [p for p, _ in workers]
        self.conns = [c for _, c in workers]
        self._state: dict[str, bool] = {}
        self._finalizer = weakref.finalize(self, _finish, self.procs, self.conns, pool, self._state)
        init_method = f"tcp://127.0.0.1:{free_port()}"
        cores = rank_cores(world_size)
        devices = worker_devices(model_config, world_size)
        try:
            for rank, conn in enumerate(self.conns):
                spec = (model_config, rank, world_size, init_method, devices[rank], cores[rank])
                _send(conn, "bind", spec)
            self._receive(list(range(world_size)), STARTUP_TIMEOUT_S)
            self.collective_rpc("init_device", timeout=STARTUP_TIMEOUT_S)
            self.collective_rpc("load_model", timeout=STARTUP_TIMEOUT_S)
        except WorkerFailedError as exc:
            if isinstance(exc.__cause__, ValueError):  # bad model / sizes: the user's error
                raise exc.__cause__ from None
            raise
        except BaseException:
            self._state["failed"] = True
            self.shutdown()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    # -- messaging ---------------------------------------------------------------------------
    def _broadcast(self, method: str, args: tuple[Any, ...], reply: bool) -> None:
        self.check_alive()
        payload = pickle.dumps((method, args, reply), protocol=_PROTOCOL)
        try:
            for conn in self.conns:
                conn.send_bytes(payload)
        except OSError as exc:
            self._fail(f"could not reach a worker ({exc})")

    def _receive(self, ranks: list[int], timeout: float | None) -> dict[int, Any]:
        """Replies of `ranks`; any worker's death or error message fails the executor."""
        pending, results = set(ranks), {}
        by_conn = {id(c): r for r, c in enumerate(self.conns)}
        by_sentinel = {p.sentinel: r for r, p in enumerate(self.procs)}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._fail(f"workers {sorted(pending)} did not answer within {timeout:.0f} s")
            ready = mpc.wait([*self.conns, *by_sentinel], timeout=left)
            readable = {by_conn[id(o)] for o in ready if not isinstance(o, int)}
            for obj in ready:
                if isinstance(obj, int):  # a sentinel: that process has exited
                    rank = by_sentinel[obj]
                    if rank not in readable:  # else read its last message first
                        self._fail(self._died(rank))
                    continue
                rank = by_conn[id(obj)]
                try:
                    status, value = pickle.loads(self.conns[rank].recv_bytes())
                except (EOFError, OSError):
                    self._fail(self._died(rank))
                if status == "error":
                    exc, tb = value
                    self._fail(f"tensor-parallel worker rank {rank} failed:\n{tb}", exc)
                if status == "array":  # the raw bytes follow the header
                    shape, dtype = value
                    value = np.empty(shape, dtype=dtype)
                    try:
                        if value.size:  # into a flat byte view: recv_bytes_into sizes by len()
                            self.conns[rank].recv_bytes_into(value.reshape(-1).view(np.uint8))
                        else:
                            self.conns[rank].recv_bytes()
                    except (EOFError, OSError):
                        self._fail(self._died(rank))
                results[rank] = value
                pending.discard(rank)
        return results

    def _died(self, rank: int) -> str:
        proc = self.procs[rank]
        proc.join(0.5)
        return (
            f"tensor-parallel worker rank {rank} (pid {proc.pid}) died (exit code {proc.exitcode})"
        )

    def _fail(self, reason: str, cause: BaseException | None = None) -> None:
        self.failed = WorkerFailedError(reason)
        self.failed.__cause__ = cause
        self._state["failed"] = True
        for proc in self.procs:  # peers of a failed rank may be stuck in a collective
            if proc.is_alive():
                proc.kill()
        self.shutdown()
        raise self.failed

    # -- the interface -----------------------------------------------------------------------
    def collective_rpc(
        self, method: str, args: tuple[Any, ...] = (), timeout: float | None = None
    ) -> list[Any]:
        self._broadcast(method, args, reply=True)
        results = self._receive(list(range(self.world_size)), timeout)
        return [results[r] for r in range(self.world_size)]

    def execute_model(
        self, sched: SchedulerOutput, logit_rows: list[tuple[int, int]]
    ) -> torch.Tensor:
        start = time.perf_counter()
        step = build_step_input(sched, logit_rows, self.block_size)
        self._broadcast("execute_step", (step,), reply=False)
        logits = torch.from_numpy(self._receive([0], None)[0])
        self.execute_seconds += time.perf_counter() - start
        return logits

    def shutdown(self) -> None:
        self._finalizer()


def _watch_parent(parent: int) -> None:
    """Exit when the driver is gone, even mid-collective (its pipe may stay unread)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def worker_main(conn: mpc.Connection) -> None:
    """A worker process: apply the driver's messages until told to exit or the driver goes.

    `bind` makes it a rank (a `Worker`), `release` resets it for another engine; any other
    message is a method of the worker (or its model runner).
    """
    from leaflm.engine.executor.worker import Worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    worker: Worker | None = None
    while True:
        try:
            method, args, reply = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if method == "exit":
            break
        try:
            if method == "bind":
                worker, result = Worker(*args), None
            elif method == "release":
                if worker is not None:
                    worker.close()
                worker, result = None, None
                gc.collect()
            else:
                assert worker is not None, "bind first"
                result = worker.call(method, args)
            if isinstance(result, torch.Tensor):  # logits rows: header, then raw bytes
                array = np.ascontiguousarray(result.numpy())
                conn.send_bytes(pickle.dumps(("array", (array.shape, array.dtype.str))))
                conn.send_bytes(array.reshape(-1).view(np.uint8).data if array.size else b"")
            elif reply:
                conn.send_bytes(pickle.dumps(("ok", result), protocol=_PROTOCOL))
        except BaseException as exc:  # report, then keep serving: the driver decides
            try:
                try:
                    message = pickle.dumps(("error", (exc, traceback.format_exc())))
                except Exception:  # an exception that does not pickle
                    message = pickle.dumps(("error", (None, traceback.format_exc())))
                conn.send_bytes(message)
            except OSError:
                break
    os._exit(0)  # skip interpreter teardown: nothing left to flush, peers may be gone


__all__ = ["MultiprocExecutor", "WorkerPool", "free_port"]
