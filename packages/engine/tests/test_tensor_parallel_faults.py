"""Worker faults and lifetimes under the `mp` executor.

A worker that dies (SIGKILL) or raises fails the engine's requests with an error naming the
rank, frees every KV block and stops the other workers. No worker outlives its engine:
`LLM.shutdown`, garbage collection, interpreter exit, SIGTERM to the driver and Ctrl-C
(SIGINT to the driver's process group) all end them. The driver-process cases run in their
own session, killed as a group in `finally`, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.executor import WorkerFailedError
from leaflm.engine.testing import process_alive

DRIVER = Path(__file__).with_name("tp_driver.py")


def wait_gone(pids: list[int], timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if process_alive(p)]


def tp_llm(model_dir) -> LLM:
    return LLM(str(model_dir), kv_cache_memory="1MiB", tensor_parallel_size=2)


def test_killed_worker_fails_requests_and_stops_the_others(llama_dir):
    llm = tp_llm(llama_dir)
    engine = llm.llm_engine
    pids = engine.executor.pids
    try:
        params = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)
        for i in range(3):
            engine.add_request(str(i), [5 + i, 6, 7, 8], params)
        engine.step()
        os.kill(pids[1], signal.SIGKILL)
        with pytest.raises(WorkerFailedError, match=r"rank 1 \(pid \d+\) died"):
            for _ in range(100):
                engine.step()
        assert not engine.requests  # every request failed, none left waiting
        assert engine.block_manager.all_free()
        assert wait_gone(pids) == []
        with pytest.raises(WorkerFailedError, match="workers are gone"):
            engine.add_request("late", [5, 6], params)
        with pytest.raises(WorkerFailedError):
            llm.generate([[5, 6]], params, use_tqdm=False)
    finally:
        llm.shutdown()


def test_worker_exception_fails_with_its_traceback(llama_dir):
    llm = tp_llm(llama_dir)
    pids = llm.llm_engine.executor.pids
    try:
        with pytest.raises(
            WorkerFailedError, match=r"(?s)rank [01] failed.*AttributeError: .*no_such_method"
        ):
            llm.llm_engine.executor.collective_rpc("no_such_method")
        assert wait_gone(pids) == []
    finally:
        llm.shutdown()


def test_shutdown_and_garbage_collection_end_the_workers(llama_dir):
    llm = tp_llm(llama_dir)
    pids = llm.llm_engine.executor.pids
    assert all(process_alive(p) for p in pids)
    llm.shutdown()
    assert wait_gone(pids) == []
    llm = tp_llm(llama_dir)
    pids = llm.llm_engine.executor.pids
    del llm
    gc.collect()
    assert wait_gone(pids) == []


@pytest.mark.parametrize("how", ["exit", "sigterm", "ctrl-c"])
def test_workers_end_with_their_driver_process(llama_dir, how):
    mode = "exit" if how == "exit" else "serve"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(llama_dir), mode],
        stdout=subprocess.PIPE, text=True, start_new_session=True, env=env,
    )  # fmt: skip
    try:
        line = driver.stdout.readline()
        assert line, "driver exited before its engine started"
        pids = json.loads(line)["pids"]
        assert len(pids) == 2 and all(process_alive(p) for p in pids)
        if how == "sigterm":
            driver.send_signal(signal.SIGTERM)
        elif how == "ctrl-c":
            os.killpg(driver.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            driver.send_signal(signal.SIGUSR1)  # where it hangs: its stacks on stderr
            time.sleep(2)
            raise
        assert wait_gone(pids) == []
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        with contextlib.suppress(ProcessLookupError):  # anything of its session still around
            os.killpg(driver.pid, signal.SIGKILL)
