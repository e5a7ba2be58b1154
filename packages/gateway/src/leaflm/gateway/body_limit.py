"""`--max-request-body-bytes`: bodies over the limit get 413 before they are read whole.

A declared Content-Length over the limit is refused at once; a chunked body is counted as
it arrives and refused as soon as it passes the limit, so no body is ever buffered past it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leaflm.gateway.errors import APIError, error_response


class _TooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing re-raises it to the app's handlers."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    @property
    def message(self) -> str:
        return f"Request body is larger than the limit of {self.max_bytes} bytes."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(scope["path"], APIError(413, self.message))(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(413, self.message)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:  # raised outside the app's handlers (e.g. while streaming)
            if not started:
                await error_response(scope["path"], APIError(413, self.message))(
                    scope, receive, send
                )
