"""`leaflm serve --tensor-parallel-size 2` as a real process, driven by the OpenAI SDK.

Greedy completions equal the offline TP=1 engine's; killing one worker mid-stream ends the
stream with an error event (not a hang), /health turns 503, and once the server is stopped
no process of it is left. The server runs in its own session and is killed as a group in
`finally`, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from leaflm.engine.testing import process_alive
from leaflm.gateway.server import free_port

MODEL = "tp-tiny-llama"


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc; zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


@pytest.fixture()
def tp_server(tiny_model_dir):
    port = free_port()
    cmd = [
        sys.executable, "-m", "leaflm.gateway", str(tiny_model_dir), "--port", str(port),
        "--served-model-name", MODEL, "--tensor-parallel-size", "2",
        "--distributed-executor-backend", "mp", "--kv-cache-memory", "4MiB",
        "--max-model-len", "256", "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "server exited during start-up"
            assert time.monotonic() < deadline, "server did not become healthy"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield proc, url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_tp2_server_smoke_then_worker_death(tp_server, tiny_model_dir):
    from openai import APIError, OpenAI

    from leaflm.engine import LLM, SamplingParams

    proc, url = tp_server
    everything = children(proc.pid)  # the two ranks (and multiprocessing's helpers)
    workers = [p for p in everything if b"spawn_main" in cmdline(p)]
    assert len(workers) == 2
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)

    offline = LLM(str(tiny_model_dir), kv_cache_memory="4MiB", max_model_len=256)
    ref = offline.generate(
        ["The model reads a token"], SamplingParams(temperature=0, max_tokens=12)
    )
    r = client.completions.create(
        model=MODEL, prompt="The model reads a token", max_tokens=12, temperature=0
    )
    assert r.choices[0].text == ref[0].outputs[0].text
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
    )
    assert sum(1 for _ in chat) >= 1

    stream = client.completions.create(
        model=MODEL, prompt="one two", max_tokens=200, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    received = 0
    start = time.monotonic()
    with pytest.raises(APIError, match="died"):
        for _ in stream:
            received += 1
            if received == 2:
                os.kill(workers[-1], signal.SIGKILL)
    assert time.monotonic() - start < 60
    assert httpx.get(url + "/health", timeout=5).status_code == 503

    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 15
    while any(process_alive(p) for p in everything) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in everything if process_alive(p)]
