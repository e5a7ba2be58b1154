"""SIGTERM stops a real `python -m leaflm.gateway` within --shutdown-timeout whatever is in
flight: running and queued streams end with an error event, and the process exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from leaflm.client.bodies import parse_metrics
from leaflm.gateway.cli import gateway_settings
from leaflm.gateway.server import free_port


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def _start_server(model_dir) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "leaflm.gateway", str(model_dir), "--port", str(port),
           "--kv-cache-memory", "8MiB", "--max-num-seqs", "1", "--shutdown-timeout", "1",
           "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def _wait_in_engine(url: str, n: int, timeout_s: float = 30.0) -> None:
    """Until the engine holds `n` requests: SIGTERM then finds them all in flight (a client
    thread still connecting would meet a closed listener, which no server can answer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = parse_metrics(httpx.get(url + "/metrics", timeout=5).text)
        if m["leaflm:num_requests_running"] + m["leaflm:num_requests_waiting"] >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the engine never held {n} requests")


def test_sigterm_ends_in_flight_streams_within_the_timeout(tiny_model_dir):
    proc, url = _start_server(tiny_model_dir)
    last_events: list[str] = []
    started = threading.Event()

    def stream() -> None:  # 16 x 250 tokens, one sequence at a time: far longer than 1 s
        body = {"prompt": "a b", "max_tokens": 250, "ignore_eos": True, "stream": True}
        try:
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                if r.status_code != 200:  # refused or aborted before its first token
                    last_events.append(f"{r.status_code} {r.read().decode()}")
                    return
                events = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        started.set()
                        events.append(line)
                last_events.append(events[-2] if len(events) > 1 else "")
        except httpx.HTTPError as exc:
            last_events.append(f"transport error: {exc}")

    try:
        _wait_healthy(url, proc)
        clients = [threading.Thread(target=stream) for _ in range(16)]
        for c in clients:
            c.start()
        assert started.wait(30)
        _wait_in_engine(url, 16)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        elapsed = time.monotonic() - start
        for c in clients:
            c.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 10.0, elapsed
    assert len(last_events) == 16
    # Each request either finished, or its stream ended with the shutdown error event, or
    # (queued, not started yet) it got a 503 saying so: none hangs, none is cut silently.
    streamed = [e for e in last_events if e.startswith("data: ")]
    refused = [e for e in last_events if e.startswith("503 ")]
    assert len(streamed) + len(refused) == 16, last_events
    assert all("shutting down" in e for e in refused)
    cut = [json.loads(e[6:]) for e in streamed if '"error"' in e]
    assert cut and all(c["error"]["type"] == "service_unavailable" for c in cut)
    assert all("shutting down" in c["error"]["message"] for c in cut)


def test_a_connection_opened_before_sigterm_gets_its_request_answered(tiny_model_dir):
    """uvicorn alone closes a connection that has not sent its request yet when shutdown
    begins, and a request already on its way is then met with a reset; here it is answered
    (503: the server is draining) and only then closed."""
    proc, url = _start_server(tiny_model_dir)
    try:
        _wait_healthy(url, proc)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            time.sleep(0.5)  # accepted by the server, nothing sent yet
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)  # the shutdown has begun
            body = b'{"prompt": "a b", "max_tokens": 4}'
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            reply = b""
            while chunk := sock.recv(65536):  # the server closes after its answer
                reply += chunk
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), reply[:300]
    assert "shutting down" in json.loads(payload)["error"]["message"]


def test_limit_flags_reach_the_settings():
    from leaflm.engine.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--max-n", "4", "--max-request-body-bytes", "1000", "--shutdown-timeout", "2",
         "--timeout-keep-alive", "3", "--timeout-request-header", "4", "--limit-concurrency", "9",
         "--allowed-origins", '["https://a.example"]', "--allow-credentials"]
    )  # fmt: skip
    s = gateway_settings(args)
    assert (s.max_n, s.max_request_body_bytes, s.shutdown_timeout_s) == (4, 1000, 2.0)
    assert (s.timeout_keep_alive_s, s.timeout_request_header_s, s.limit_concurrency) == (3, 4, 9)
    assert s.allowed_origins == ["https://a.example"] and s.allow_credentials
