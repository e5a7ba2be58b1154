"""Server-sent events -> JSON payloads, ending at `data: [DONE]` or the end of the body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from leaflm.client.errors import LeaflmAPIError

_DONE = object()


def _payload(line: str, status: int) -> Any:
    if not line.startswith("data:"):
        return None  # blank separator, comment or other field
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    payload = json.loads(data)
    if isinstance(payload, dict) and payload.get("error") is not None:
        raise LeaflmAPIError.from_body(status, payload)
    return payload


def iter_events(lines: Iterator[str], status: int = 200) -> Iterator[dict[str, Any]]:
    for line in lines:
        payload = _payload(line, status)
        if payload is _DONE:
            return
        if payload is not None:
            yield payload


async def aiter_events(lines: AsyncIterator[str], status: int = 200) -> AsyncIterator[dict]:
    async for line in lines:
        payload = _payload(line, status)
        if payload is _DONE:
            return
        if payload is not None:
            yield payload
