"""uvicorn, with the limits a public server needs: bounded shutdown and header timeouts.

uvicorn's SIGTERM handling waits for every open stream, with no bound by default, and a
connection that never finishes its request head is kept forever. Here:
- on shutdown, new requests get 503 at once; in-flight ones have `shutdown_timeout_s` to
  finish, then they are aborted in the engine and their streams end with a clear error event
  (uvicorn's own graceful timeout, a little later, is the backstop);
- a connection has `timeout_request_header_s` to send each request head, whether it is idle
  or trickling bytes (keep-alive idling after a response is uvicorn's `timeout_keep_alive`).
"""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from leaflm.gateway.settings import GatewaySettings
from leaflm.gateway.state import Gateway


class HeaderTimeoutH11Protocol(H11Protocol):
    """h11 protocol that closes connections that are slow to send a request head."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for a complete request head
            self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_expired)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        idle = self.cycle is None or self.cycle.response_complete
        if self.conn.their_state is h11.IDLE and idle and not self.transport.is_closing():
            self.transport.close()


class GatewayServer(uvicorn.Server):
    """uvicorn.Server whose shutdown drains the gateway within a bound."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        gw = self.gateway
        gw.admission.draining = True
        timeout = gw.settings.shutdown_timeout_s
        loop = asyncio.get_running_loop()
        reason = f"The server is shutting down (in-flight requests get {timeout:g} s to finish)."
        handle = loop.call_later(timeout, lambda: loop.create_task(gw.abort_in_flight(reason)))
        try:
            await super().shutdown(sockets)
        finally:
            handle.cancel()


def build_server(
    app: Any, settings: GatewaySettings, host: str, port: int, log_level: str = "info"
) -> GatewayServer:
    """The uvicorn server for `app` (made by `create_app`) with the settings' limits."""
    protocol = type(
        "LeaflmH11Protocol",
        (HeaderTimeoutH11Protocol,),
        {"header_timeout_s": settings.timeout_request_header_s},
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        # asyncio's own loop, even where uvloop is installed: under uvloop a SIGTERM reset
        # one of 16 in-flight connections in 4 of 12 runs of test_sigterm (0 of 12 on
        # asyncio), though it made the 16-user decode step 28.5 ms against 35.
        loop="asyncio",
        http=protocol,
        timeout_keep_alive=math.ceil(settings.timeout_keep_alive_s),
        limit_concurrency=settings.limit_concurrency,
        # Backstop: uvicorn cancels what is left a little after our own abort.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s + 5),
    )
    return GatewayServer(config, app.state.gateway)
