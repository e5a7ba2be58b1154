"""Servers the bench starts for itself, and the guarantee that it stops them.

Each managed server is a subprocess in its own process group bound to 127.0.0.1 on a free
port. `ManagedServer` is a context manager: leaving it for any reason (finish, error,
Ctrl-C) sends SIGTERM to the whole group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import httpx

from leaflm.bench.baselines import resolve_dtype
from leaflm.bench.offline import LEAFLM_VARIANTS

HOST = "127.0.0.1"
KINDS = (*LEAFLM_VARIANTS, "hf-serve", "hf-serve-cb", "naive")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _transformers_cli() -> list[str]:
    script = Path(sys.executable).parent / "transformers"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from transformers.cli.transformers import main; main()"]


def server_command(
    kind: str,
    model_dir: str,
    port: int,
    device: str = "cpu",
    dtype: str = "auto",
    kv_cache_memory: str | None = None,
) -> list[str]:
    """The command line that serves `model_dir` as `kind` on 127.0.0.1:`port`.

    `kv_cache_memory` (leaflm only, e.g. "64MiB") sizes its CPU KV cache; None is the
    engine's default, which the engine allocates and zeroes whole at start.
    """
    dtype_name = str(resolve_dtype(dtype, device)).removeprefix("torch.")
    if kind.startswith("leaflm"):
        from leaflm.bench.offline import leaflm_variant

        model, quantization, kv_cache_dtype = leaflm_variant(kind, model_dir)
        # `python -m leaflm.gateway` is `leaflm serve` without needing entry-point metadata
        cmd = [sys.executable, "-m", "leaflm.gateway", model]
        return [
            *cmd,
            *(["--quantization", quantization] if quantization else []),
            *(["--kv-cache-dtype", kv_cache_dtype] if kv_cache_dtype != "auto" else []),
            "--host",
            HOST,
            "--port",
            str(port),
            "--device",
            device,
            "--dtype",
            dtype_name,
            *(["--kv-cache-memory", kv_cache_memory] if kv_cache_memory else []),
        ]
    if kind in ("hf-serve", "hf-serve-cb"):
        hf_dtype = dtype_name
        cmd = [*_transformers_cli(), "serve", model_dir, "--host", HOST, "--port", str(port)]
        cmd += ["--device", device, "--dtype", hf_dtype, "--log-level", "warning"]
        return cmd + (["--continuous-batching"] if kind == "hf-serve-cb" else [])
    if kind == "naive":
        return [
            sys.executable,
            "-m",
            "leaflm.bench.naive_server",
            "--model",
            model_dir,
            "--port",
            str(port),
            "--device",
            device,
            "--dtype",
            dtype,
        ]
    raise ValueError(f"unknown server kind {kind!r}: choose from {', '.join(KINDS)}")


class ManagedServer:
    """Start `command`, wait until `health_path` answers 200, always stop it on exit."""

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        log_path: str | Path,
        health_path: str = "/v1/models",
        startup_timeout: float = 300.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.command, self.port = name, command, port
        self.log_path = Path(log_path)
        self.health_path = health_path
        self.startup_timeout = startup_timeout
        self.env = env  # the whole environment, if not this process's
        self.process: subprocess.Popen | None = None
        self.ready_s: float | None = None  # seconds from launch until health answered

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> ManagedServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **(self.env if self.env is not None else os.environ),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self._log: TextIO | None = open(self.log_path, "w", encoding="utf-8")  # closed in stop()
        launched = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - launched
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} server exited with code {self.process.returncode} during "
                    f"startup; last log lines:\n{self.tail()}"
                )
            try:
                if httpx.get(self.base_url + self.health_path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"{self.name} server not ready after {self.startup_timeout:.0f} s; "
            f"last log lines:\n{self.tail()}"
        )

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after `grace` seconds."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # children the leader left behind
        log: TextIO | None = getattr(self, "_log", None)
        if log is not None:
            log.close()
            self._log = None

    def __exit__(self, *exc: object) -> None:
        self.stop()
