"""`mp`: one spawned worker process per tensor-parallel rank on this node.

Per step the driver pickles the laid-out batch (`StepInput`) once and writes those bytes to
each rank's pipe: one message per rank per step, a few KB for decode steps. Rank 0 sends
back the logits rows (float32, pickled numpy); other ranks answer only when they fail.
While waiting the driver also watches every worker's process sentinel, so a worker that
dies (killed, OOM) fails the step at once instead of hanging in a collective.

No worker outlives the driver: `shutdown`, garbage collection of the executor and
interpreter exit (a `weakref.finalize`) terminate them; if the driver dies without cleanup
(SIGKILL, SIGTERM without handler) every worker sees its pipe close or its parent change and
exits; workers ignore SIGINT so Ctrl-C reaches only the driver, which then shuts them down.
"""

from __future__ import annotations

import contextlib
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

import torch

from leaflm.engine.config import ModelConfig
from leaflm.engine.executor.base import Executor, WorkerFailedError
from leaflm.engine.executor.cpu_binding import rank_cores
from leaflm.engine.scheduler import SchedulerOutput
from leaflm.engine.step_input import build_step_input

STARTUP_TIMEOUT_S = 600.0


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


class MultiprocExecutor(Executor):
    def __init__(self, model_config: ModelConfig, world_size: int) -> None:
        self.world_size = world_size
        self.block_size = 16
        ctx = mp.get_context("spawn")
        init_method = f"tcp://127.0.0.1:{free_port()}"
        cores = rank_cores(world_size)
        devices = worker_devices(model_config, world_size)
        self.conns: list[mpc.Connection] = []
        self.procs: list[Any] = []
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.conns)
        for rank in range(world_size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(
                    child,
                    model_config,
                    rank,
                    world_size,
                    init_method,
                    devices[rank],
                    cores[rank],
                ),
                name=f"leaflm-tp-worker-{rank}",
                daemon=True,
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        try:
            self.collective_rpc("init_device", timeout=STARTUP_TIMEOUT_S)
            self.collective_rpc("load_model", timeout=STARTUP_TIMEOUT_S)
        except WorkerFailedError as exc:
            if isinstance(exc.__cause__, ValueError):  # bad model / sizes: the user's error
                raise exc.__cause__ from None
            raise
        except BaseException:
            self.shutdown()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    # -- messaging ---------------------------------------------------------------------------
    def _broadcast(self, method: str, args: tuple[Any, ...], reply: bool) -> None:
        self.check_alive()
        payload = pickle.dumps((method, args, reply), protocol=pickle.HIGHEST_PROTOCOL)
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
            for obj in ready:
                if isinstance(obj, int):  # a sentinel: that process has exited
                    rank = by_sentinel[obj]
                    if any(by_conn[id(c)] == rank for c in ready if not isinstance(c, int)):
                        continue  # read its last message first
                    code = self.procs[rank].exitcode
                    self._fail(f"tensor-parallel worker rank {rank} died (exit code {code})")
                rank = by_conn[id(obj)]
                try:
                    status, value = pickle.loads(obj.recv_bytes())
                except (EOFError, OSError):
                    code = self.procs[rank].exitcode
                    self._fail(f"tensor-parallel worker rank {rank} died (exit code {code})")
                if status == "error":
                    exc, tb = value
                    self._fail(f"tensor-parallel worker rank {rank} failed:\n{tb}", exc)
                results[rank] = value
                pending.discard(rank)
        return results

    def _fail(self, reason: str, cause: BaseException | None = None) -> None:
        self.failed = WorkerFailedError(reason)
        self.failed.__cause__ = cause
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

    def init_kv_cache(self, num_blocks: int, block_size: int, num_cpu_blocks: int) -> None:
        self.block_size = block_size
        super().init_kv_cache(num_blocks, block_size, num_cpu_blocks)

    def execute_model(
        self, sched: SchedulerOutput, logit_rows: list[tuple[int, int]]
    ) -> torch.Tensor:
        step = build_step_input(sched, logit_rows, self.block_size)
        self._broadcast("execute_step", (step,), reply=False)
        logits = self._receive([0], None)[0]
        return torch.from_numpy(logits)

    def shutdown(self) -> None:
        self._finalizer()


def _stop(procs: list[Any], conns: list[mpc.Connection], grace_s: float = 5.0) -> None:
    """Ask every worker to exit, then terminate, then kill whatever is left."""
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.send_bytes(pickle.dumps(("exit", (), False)))
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


def _watch_parent(parent: int) -> None:
    """Exit when the driver is gone, even mid-collective (its pipe may stay unread)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def worker_main(
    conn: mpc.Connection,
    model_config: ModelConfig,
    rank: int,
    world_size: int,
    init_method: str,
    device: torch.device,
    cores: list[int] | None,
) -> None:
    """A worker process: apply the driver's messages until told to exit or the driver goes."""
    from leaflm.engine.executor.worker import Worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    worker = Worker(model_config, rank, world_size, init_method, device, cores)
    while True:
        try:
            method, args, reply = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if method == "exit":
            break
        try:
            result = worker.call(method, args)
            if isinstance(result, torch.Tensor):
                result = result.numpy()
            if reply or (rank == 0 and method == "execute_step"):
                conn.send_bytes(pickle.dumps(("ok", result), protocol=pickle.HIGHEST_PROTOCOL))
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


__all__ = ["MultiprocExecutor", "free_port"]
