"""Run the app with uvicorn in a background thread, on a free port of 127.0.0.1.

Tests and benchmarks use this to talk to a real HTTP server from the same process.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from leaflm.gateway.app import create_app
from leaflm.gateway.http_server import build_server
from leaflm.gateway.settings import GatewaySettings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """`with ServerThread(engine, settings) as server: httpx.get(server.url + "/health")`."""

    def __init__(
        self,
        engine: Any,
        settings: GatewaySettings | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        settings = settings or GatewaySettings()
        self.app = create_app(engine, settings)
        self.host, self.port = host, port or free_port(host)
        self._server = build_server(self.app, settings, self.host, self.port, "warning")
        self._thread = threading.Thread(target=self._server.run, name="leaflm-gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
