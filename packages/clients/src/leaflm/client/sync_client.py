"""`Client`: the blocking client for leaflm's OpenAI and TGI APIs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from leaflm.client import bodies
from leaflm.client.errors import LeaflmConnectionError
from leaflm.client.retry import RETRYABLE_TRANSPORT_ERRORS, RetryPolicy
from leaflm.client.sse import iter_events
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


class Client:
    """Blocking client. Streams are iterators; leaving one early closes the connection,
    which makes the server abort the request.

    Args:
        base_url: the server, e.g. "http://127.0.0.1:8000".
        api_key: sent as `Authorization: Bearer <api_key>`.
        timeout: seconds for connect/read (httpx semantics); a stream's read timeout applies
            between chunks.
        retry: how 429/503 answers and connection failures are retried.
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
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, json: Any = None, stream: bool = False):
        """Send with retries; returns a successful response (open when streaming)."""
        attempt = 0
        while True:
            request = self._http.build_request(method, path, json=json)
            try:
                response = self._http.send(request, stream=stream)
            except RETRYABLE_TRANSPORT_ERRORS as exc:
                if not self.retry.should_retry(attempt, None):
                    raise LeaflmConnectionError(f"{method} {path}: {exc}") from exc
                time.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            except httpx.TransportError as exc:
                raise LeaflmConnectionError(f"{method} {path}: {exc}") from exc
            if response.status_code < 400:
                return response
            text = response.read().decode("utf-8", "replace")
            response.close()
            if self.retry.should_retry(attempt, response.status_code):
                time.sleep(self.retry.delay(attempt, response.headers.get("retry-after")))
                attempt += 1
                continue
            bodies.raise_for_error(response, text)

    def _json(self, method: str, path: str, json: Any = None) -> Any:
        return self._send(method, path, json).json()

    def _stream(self, path: str, json: Any, model: type[T]) -> Iterator[T]:
        """Open the stream now (errors raise here), then yield typed events lazily."""
        response = self._send("POST", path, json, stream=True)

        def events() -> Iterator[T]:
            try:
                for event in iter_events(response.iter_lines(), response.status_code):
                    yield model.model_validate(event)
            except httpx.TransportError as exc:
                raise LeaflmConnectionError(f"POST {path}: stream broke: {exc}") from exc
            finally:
                response.close()

        return events()

    def completions(
        self, prompt: str | list, *, model: str | None = None, stream: bool = False, **params: Any
    ) -> Completion | Iterator[CompletionChunk]:
        """POST /v1/completions; `params` are OpenAI/vLLM fields (max_tokens, n, ...)."""
        body = bodies.completion_body(prompt, model, stream, params)
        if stream:
            return self._stream("/v1/completions", body, Completion)
        return Completion.model_validate(self._json("POST", "/v1/completions", body))

    def chat(
        self, messages: list[dict], *, model: str | None = None, stream: bool = False, **params: Any
    ) -> ChatCompletion | Iterator[ChatCompletionChunk]:
        """POST /v1/chat/completions."""
        body = bodies.chat_body(messages, model, stream, params)
        path = "/v1/chat/completions"
        if stream:
            return self._stream(path, body, ChatCompletionChunk)
        return ChatCompletion.model_validate(self._json("POST", path, body))

    def generate(self, inputs: str, **parameters: Any) -> Generation:
        """TGI POST /generate; `parameters` as TGI's (max_new_tokens, details, ...)."""
        body = bodies.generate_body(inputs, parameters)
        return Generation.model_validate(self._json("POST", "/generate", body))

    def generate_stream(self, inputs: str, **parameters: Any) -> Iterator[StreamEvent]:
        """TGI POST /generate_stream: one event per token."""
        body = bodies.generate_body(inputs, parameters)
        return self._stream("/generate_stream", body, StreamEvent)

    def models(self) -> ModelList:
        return ModelList.model_validate(self._json("GET", "/v1/models"))

    def health(self) -> Health:
        """One GET /health, no retries: ok is False while loading or shutting down."""
        try:
            r = self._http.get("/health")
        except httpx.TransportError as exc:
            return Health(ok=False, status=f"unreachable: {exc}")
        try:
            status = str(r.json().get("status", r.status_code))
        except ValueError:
            status = str(r.status_code)
        return Health(ok=r.status_code == 200, status=status)

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {"name{labels}": value}."""
        return bodies.parse_metrics(self._send("GET", "/metrics").text)
