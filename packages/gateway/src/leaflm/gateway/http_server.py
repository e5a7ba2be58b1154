"""uvicorn, with the limits a public server needs: bounded shutdown and header timeouts.

uvicorn's SIGTERM handling waits for every open stream, with no bound by default, and a
connection that never finishes its request head is kept forever. Here:
- on shutdown, new requests get 503 at once; in-flight ones have `shutdown_timeout_s` to
  finish, then they are aborted in the engine and their streams end with a clear error event
  (uvicorn's own graceful timeout, a little later, is the backstop);
- a connection has `timeout_request_header_s` to send each request head, whether it is idle
  or trickling bytes (keep-alive idling after a response is uvicorn's `timeout_keep_alive`);
- a connection accepted before the shutdown but not read yet is not closed under its
  client's request (the kernel answers unread data with a reset): it is read, answered
  (503 while draining) and then closed.
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
    """h11 protocol that closes connections that are slow to send a request head, and that
    lets a connection opened before a shutdown send its request first."""

    header_timeout_s = 10.0
    # How long a connection with no request yet may take to send one once shutdown begins.
    shutdown_request_grace_s = 1.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._shutting_down = False
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for a complete request head
            self._arm_header_timer()
        else:
            self._disarm_header_timer()
            if self._shutting_down and self.cycle is not None:
                self.cycle.keep_alive = False  # answer it, then close

    def shutdown(self) -> None:
        """uvicorn closes a connection with no request in flight at once. One that has had no
        request yet was opened to send one, which may be in the socket unread: closing would
        reset it, so it gets a moment to arrive (then it is answered and the connection
        closed, see `data_received`). Idle keep-alive connections close at once, as before."""
        self._shutting_down = True
        if self.cycle is None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(
                min(self.header_timeout_s, self.shutdown_request_grace_s), self._header_expired
            )
        else:
            super().shutdown()

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
        # A few loop turns before the listener closes: connections the kernel has already
        # accepted are taken in (closing the listener would reset them) and reach
        # `connection_made`, so the shutdown below sees them (asyncio's loop takes three:
        # accept, make the transport, call the protocol).
        for _ in range(4):
            await asyncio.sleep(0)
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
        loop="auto",  # uvloop where installed (a dependency on Linux and macOS)
        http=protocol,
        timeout_keep_alive=math.ceil(settings.timeout_keep_alive_s),
        limit_concurrency=settings.limit_concurrency,
        # Backstop: uvicorn cancels what is left a little after our own abort.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s + 5),
    )
    return GatewayServer(config, app.state.gateway)
