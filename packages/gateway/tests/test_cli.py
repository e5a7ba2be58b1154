"""`leaflm serve` is registered through the entry point and maps its flags to the engine;
`python -m leaflm.gateway MODEL` serves a model over HTTP."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import httpx

from leaflm.engine.cli import build_parser
from leaflm.gateway.cli import add_serve_arguments, engine_kwargs
from leaflm.gateway.server import free_port


def test_serve_flags_reach_engine_and_settings():
    args = build_parser().parse_args(
        ["serve", "some/model", "--port", "9001", "--api-key", "k", "--max-queue", "4",
         "--served-model-name", "leafy", "--kv-cache-memory", "512MiB", "--max-model-len", "128",
         "--disable-prefix-caching", "--swap-space", "1.5", "--seed", "7", "--dtype", "float32",
         "--kv-cache-dtype", "float16"]
    )  # fmt: skip
    assert (args.model, args.port, args.api_key, args.max_queue) == ("some/model", 9001, "k", 4)
    assert args.served_model_name == "leafy"
    kw = engine_kwargs(args)
    assert kw["kv_cache_memory"] == "512MiB" and kw["max_model_len"] == 128
    assert kw["enable_prefix_caching"] is False and kw["swap_space_gb"] == 1.5
    assert kw["seed"] == 7 and kw["dtype"] == "float32" and kw["kv_cache_dtype"] == "float16"
    defaults = build_parser().parse_args(["serve"])
    assert defaults.model is None and defaults.host == "127.0.0.1" and defaults.port == 8000
    assert engine_kwargs(defaults)["enable_prefix_caching"] is True
    assert engine_kwargs(defaults)["kv_cache_dtype"] == "auto"


def test_python_m_gateway_serves(tiny_model_dir):
    port = free_port()
    cmd = [sys.executable, "-m", "leaflm.gateway", str(tiny_model_dir), "--port", str(port),
           "--served-model-name", "cli-model", "--kv-cache-memory", "8MiB", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        models = httpx.get(url + "/v1/models").json()
        assert models["data"][0]["id"] == "cli-model"
        body = {"model": "cli-model", "prompt": "a leaf", "max_tokens": 3}
        assert (
            httpx.post(url + "/v1/completions", json=body).json()["usage"]["completion_tokens"] == 3
        )
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_refuses_a_busy_port_before_loading_the_model():
    """The default model takes many seconds to load; a busy port must be named at once."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        cmd = [sys.executable, "-m", "leaflm.engine.cli", "serve", "--port", str(port)]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=2)
        finally:
            proc.kill()
            proc.wait()
        elapsed = time.monotonic() - start
    text = out.decode()
    assert proc.returncode not in (0, None), text
    assert f"127.0.0.1:{port} is already in use" in text, text
    assert f"pid {os.getpid()}" in text, text  # psutil names this test process as the holder
    assert elapsed < 2, f"took {elapsed:.2f}s"


def test_every_serve_flag_says_what_it_does_and_its_default():
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 18
    for action in flags:
        assert action.help and "default" in action.help, action.option_strings
    text = parser.format_help()
    assert "(default: 256)" in text and "(default: 16)" in text and "(default: 0.9)" in text
