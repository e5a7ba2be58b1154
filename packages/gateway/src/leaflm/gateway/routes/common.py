"""What every generation route does around the engine call: admit, validate, release once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from leaflm.gateway.errors import APIError, bad_request
from leaflm.gateway.state import Gateway, gateway_of
from leaflm.gateway.streams import event_stream, prime, unless_disconnected

T = TypeVar("T")


class Once:
    """A callback that runs at most once (releasing an admission slot)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Callable[[], None] | None = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


async def first_or_400(outputs: AsyncIterator[T]) -> AsyncIterator[T]:
    """Prime a stream so engine ValueErrors become 400s before any header is sent."""
    from leaflm.gateway.generation import RequestAborted

    try:
        _, rest = await prime(outputs)
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    except RequestAborted as exc:  # aborted while queued (e.g. shutdown): nothing was sent
        raise APIError(503, str(exc), retry_after=1) from exc
    except StopAsyncIteration as exc:
        raise APIError(500, "The engine produced no output.") from exc
    return rest


async def serve_generation(
    request: Request,
    model: str | None,
    respond: Callable[[Gateway], Awaitable[Any]],
) -> Response:
    """Admit a request, then let `respond` build a JSON body or an SSE stream.

    `respond` returns a dict (sent as JSON once the engine is done, cancelled if the client
    leaves first) or an `(AsyncIterator[str], headers)` pair for an SSE stream, whose end
    releases the admission slot.
    """
    gw = gateway_of(request)
    gw.admit()
    release = Once(gw.done)
    handed_off = False
    try:
        gw.check_model(model)
        result = await unless_disconnected(request, respond(gw))
        if result is None:  # the client is gone; nobody reads a response
            return Response(status_code=499)
        if isinstance(result, tuple):
            body, headers = result
            handed_off = True  # the stream releases the slot when it ends
            return event_stream(body, release, request.url.path, headers)
        return JSONResponse(result)
    finally:
        if not handed_off:
            release()


def now() -> int:
    return int(time.time())
