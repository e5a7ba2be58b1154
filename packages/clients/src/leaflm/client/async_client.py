"""`AsyncClient`: the asyncio client for leaflm's OpenAI and TGI APIs (same surface as Client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from leaflm.client import bodies
from leaflm.client.errors import LeaflmConnectionError
from leaflm.client.retry import RETRYABLE_TRANSPORT_ERRORS, RetryPolicy
from leaflm.client.sse import aiter_events
from leaflm.client.types import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    Generation,
    Health,
    ModelList,
    StreamEvent,
)

T = TypeVar("T", bound=BaseModel)


class AsyncClient:
    """Asyncio client; streams are async iterators (`aclose()` one to abort its request).

    Args: as `Client`.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, json: Any = None, stream: bool = False):
        attempt = 0
        while True:
            request = self._http.build_request(method, path, json=json)
            try:
                response = await self._http.send(request, stream=stream)
            except RETRYABLE_TRANSPORT_ERRORS as exc:
                if not self.retry.should_retry(attempt, None):
                    raise LeaflmConnectionError(f"{method} {path}: {exc}") from exc
                await asyncio.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            except httpx.TransportError as exc:
                raise LeaflmConnectionError(f"{method} {path}: {exc}") from exc
            if response.status_code < 400:
                return response
            text = (await response.aread()).decode("utf-8", "replace")
            await response.aclose()
            if self.retry.should_retry(attempt, response.status_code):
                await asyncio.sleep(self.retry.delay(attempt, response.headers.get("retry-after")))
                attempt += 1
                continue
            bodies.raise_for_error(response, text)

    async def _json(self, method: str, path: str, json: Any = None) -> Any:
        return (await self._send(method, path, json)).json()

    async def _stream(self, path: str, json: Any, model: type[T]) -> AsyncIterator[T]:
        response = await self._send("POST", path, json, stream=True)

        async def events() -> AsyncIterator[T]:
            try:
                async for event in aiter_events(response.aiter_lines(), response.status_code):
                    yield model.model_validate(event)
            except httpx.TransportError as exc:
                raise LeaflmConnectionError(f"POST {path}: stream broke: {exc}") from exc
            finally:
                await response.aclose()

        return events()

    async def completions(
        self, prompt: str | list, *, model: str | None = None, stream: bool = False, **params: Any
    ) -> Completion | AsyncIterator[CompletionChunk]:
        body = bodies.completion_body(prompt, model, stream, params)
        if stream:
            return await self._stream("/v1/completions", body, Completion)
        return Completion.model_validate(await self._json("POST", "/v1/completions", body))

    async def chat(
        self, messages: list[dict], *, model: str | None = None, stream: bool = False, **params: Any
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        body = bodies.chat_body(messages, model, stream, params)
        path = "/v1/chat/completions"
        if stream:
            return await self._stream(path, body, ChatCompletionChunk)
        return ChatCompletion.model_validate(await self._json("POST", path, body))

    async def generate(self, inputs: str, **parameters: Any) -> Generation:
        body = bodies.generate_body(inputs, parameters)
        return Generation.model_validate(await self._json("POST", "/generate", body))

    async def generate_stream(self, inputs: str, **parameters: Any) -> AsyncIterator[StreamEvent]:
        body = bodies.generate_body(inputs, parameters)
        return await self._stream("/generate_stream", body, StreamEvent)

    async def models(self) -> ModelList:
        return ModelList.model_validate(await self._json("GET", "/v1/models"))

    async def health(self) -> Health:
        try:
            r = await self._http.get("/health")
        except httpx.TransportError as exc:
            return Health(ok=False, status=f"unreachable: {exc}")
        try:
            status = str(r.json().get("status", r.status_code))
        except ValueError:
            status = str(r.status_code)
        return Health(ok=r.status_code == 200, status=status)

    async def metrics(self) -> dict[str, float]:
        return bodies.parse_metrics((await self._send("GET", "/metrics")).text)
