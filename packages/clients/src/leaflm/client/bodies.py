"""Request bodies and response parsing shared by the sync and async clients."""

from __future__ import annotations

from typing import Any

import httpx

from leaflm.client.errors import LeaflmAPIError


def completion_body(prompt: Any, model: str | None, stream: bool, params: dict) -> dict:
    return _drop_none({"model": model, "prompt": prompt, "stream": stream, **params})


def chat_body(messages: list[dict], model: str | None, stream: bool, params: dict) -> dict:
    return _drop_none({"model": model, "messages": messages, "stream": stream, **params})


def generate_body(inputs: str, params: dict) -> dict:
    return {"inputs": inputs, "parameters": _drop_none(params)}


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def raise_for_error(response: httpx.Response, body_text: str | None = None) -> None:
    """Turn an error status into LeaflmAPIError (reading the body as JSON when possible)."""
    if response.status_code < 400:
        return
    text = body_text if body_text is not None else response.text
    try:
        body = httpx.Response(200, content=text.encode()).json()
    except ValueError:
        body = None
    raise LeaflmAPIError.from_body(response.status_code, body, text)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value}, skipping comments."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples
