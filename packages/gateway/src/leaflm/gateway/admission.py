"""Who may enter: API-key check, readiness, and the in-flight request limit.

`--max-queue N` bounds the generation requests the gateway holds at once (running in the
engine or waiting for it); request N+1 is refused at the door with 429 and Retry-After, so
an overloaded server sheds load quickly instead of letting latency grow without bound.
While the engine is missing or shutting down every generation request gets 503.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from leaflm.gateway.errors import APIError, error_response


class Admission:
    """Counts requests in flight and decides whether one more may start."""

    def __init__(self, max_queue: int | None, retry_after_s: int = 1) -> None:
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be >= 1 or None, got {max_queue}")
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.ready = False
        self.draining = False

    def check_ready(self) -> None:
        if self.draining:
            raise APIError(503, "The server is shutting down.", retry_after=self.retry_after_s)
        if not self.ready:
            raise APIError(503, "The engine is not ready yet.", retry_after=self.retry_after_s)

    def acquire(self) -> None:
        """Admit one request or raise 429/503; pair every success with `release`."""
        self.check_ready()
        if self.max_queue is not None and self.in_flight >= self.max_queue:
            raise APIError(
                429,
                f"The server is busy: {self.in_flight} requests in flight "
                f"(max_queue={self.max_queue}). Retry later.",
                code="rate_limit_exceeded",
                retry_after=self.retry_after_s,
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    @contextmanager
    def slot(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


PUBLIC_PATHS = frozenset(
    {"/health", "/metrics", "/version", "/info", "/openapi.json", "/docs", "/redoc"}
)


class APIKeyMiddleware:
    """Pure ASGI middleware: 401 before routing or body parsing when the key is wrong.

    Runs first so an unauthenticated caller learns nothing about the body it sent; the
    public operational paths (health, metrics, version, info) stay open.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            try:
                check_api_key(Request(scope), self.api_key)
            except APIError as err:
                await error_response(scope["path"], err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def check_api_key(request: Request, api_key: str | None) -> None:
    """401 unless the request carries `Authorization: Bearer <api_key>` (or x-api-key)."""
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    presented = token.strip() if scheme.lower() == "bearer" else ""
    presented = presented or request.headers.get("x-api-key", "")
    if not presented:
        raise APIError(
            401,
            "Missing API key: send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )
    if not hmac.compare_digest(presented.encode(), api_key.encode()):
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
