"""Async plumbing between the engine's output iterators and HTTP responses.

Two jobs: merge several engine iterators (one per prompt) into one, and make sure a
client that goes away stops its engine requests, whether the response is streamed (the
body iterator is cancelled) or not (a watcher on the ASGI receive channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse

from leaflm.gateway.errors import APIError, error_body, is_tgi_path, logger

T = TypeVar("T")
_DONE = object()


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event exactly as OpenAI frames it: `data: <json>\\n\\n`."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def merge(iterators: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Yield (source index, item) from all iterators as items arrive.

    Each source runs in its own task; when the consumer stops early (or is cancelled)
    every task is cancelled, which makes each engine iterator abort its request.
    """
    if len(iterators) == 1:
        try:
            async for item in iterators[0]:
                yield 0, item
        finally:
            await close_quietly(iterators[0])
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, it: AsyncIterator[T]) -> None:
        try:
            async for item in it:
                await queue.put((i, item))
            await queue.put((i, _DONE))
        except Exception as exc:
            await queue.put((i, exc))
        finally:
            await close_quietly(it)

    tasks = [asyncio.ensure_future(pump(i, it)) for i, it in enumerate(iterators)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)


async def prime(it: AsyncIterator[T]) -> tuple[T, AsyncIterator[T]]:
    """Take the first item now (so errors become proper 4xx before headers are sent)."""
    first = await it.__anext__()

    async def rest() -> AsyncIterator[T]:
        try:
            yield first
            async for item in it:
                yield item
        finally:
            await close_quietly(it)

    return first, rest()


async def close_quietly(it: Any) -> None:
    """aclose() an async generator even inside a cancelled scope."""
    aclose = getattr(it, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await aclose()


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (after the body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`; if the client disconnects first, cancel it and return None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(watcher, return_exceptions=True)
    if task in done:
        return task.result()
    with anyio.CancelScope(shield=True):
        await asyncio.gather(task, return_exceptions=True)
    return None


async def _guarded(body: AsyncIterator[str], path: str) -> AsyncIterator[str]:
    """Forward events; a failure mid-stream becomes a final error event (the status line is
    already sent) in the dialect of `path`, then `[DONE]` on OpenAI routes. An abort says
    why (e.g. shutdown); other failures are logged, and the client learns no internals."""
    from leaflm.gateway.generation import RequestAborted

    try:
        async for event in body:
            yield event
    except Exception as exc:
        if isinstance(exc, RequestAborted):
            err = APIError(503, str(exc))
        else:
            logger.exception("stream on %s failed", path)
            err = APIError(500, f"Generation failed ({type(exc).__name__}); see the server log.")
        _, payload = error_body(path, err)
        yield sse(payload)
        if not is_tgi_path(path):
            yield SSE_DONE
    finally:
        await close_quietly(body)


def event_stream(
    body: AsyncIterator[str],
    on_close: Callable[[], None],
    path: str,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """An SSE response that calls `on_close` once however it ends (even if never started)."""
    return _ClosingStream(_guarded(body, path), on_close, headers)


class _ClosingStream(StreamingResponse):
    def __init__(
        self, body: AsyncIterator[str], on_close: Callable[[], None], headers: dict[str, str] | None
    ) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self._body = body
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await close_quietly(self._body)
            self._on_close()


__all__ = [
    "SSE_DONE",
    "event_stream",
    "merge",
    "prime",
    "sse",
    "unless_disconnected",
]
