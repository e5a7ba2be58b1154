"""What /openapi.json says each route returns: bodies, SSE streams, errors, the API key.

FastAPI derives request schemas from the pydantic models; the responses are declared here so
that the document is the contract clients (and schemathesis in the tests) can check: the
OpenAI routes answer errors as `{"error": {...}}` with 400/401/404/413/429/503, the TGI routes
as `{"error", "error_type"}` with 422 for validation, and streams are `text/event-stream`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from leaflm.gateway.errors import is_tgi_path
from leaflm.gateway.schemas.openai import ErrorResponse as OpenAIError
from leaflm.gateway.schemas.tgi import ErrorResponse as TGIError
from leaflm.gateway.state import Gateway

_OPENAI_ERRORS = {
    400: "Invalid request: a field's type or value, a limit, or the context length",
    401: "Missing or wrong API key",
    404: "Unknown model",
    413: "Request body too large",
    429: "Too many requests in flight (Retry-After)",
    500: "Internal error (details in the server log only)",
    503: "Engine not ready, shutting down, or the request was aborted (Retry-After)",
}
_TGI_ERRORS = {
    401: "Missing or wrong API key",
    413: "Request body too large",
    422: "Invalid request (TGI's validation error)",
    429: "Too many requests in flight",
    500: "Internal error (details in the server log only)",
    503: "Engine not ready or shutting down",
}
_SSE = {
    "schema": {
        "type": "object",
        "description": "One server-sent event: `data: <JSON object>` (the 200 schema), or "
        "`data: [DONE]` at the end of an OpenAI stream",
        "required": ["data"],
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    },
}


def _errors(table: dict[int, str], model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": model, "description": text} for code, text in table.items()}


def openai_responses(model: type[BaseModel], stream: str) -> dict[int | str, dict[str, Any]]:
    """200 as JSON `model` (or, with `stream: true`, SSE events of `stream`) plus errors."""
    ok = {
        "model": model,
        "description": f"JSON, or with `stream: true` server-sent events: {stream}, "
        "then `data: [DONE]`; a failure mid-stream is a last event holding an error body.",
        "content": {"text/event-stream": _SSE},
    }
    return {200: ok, **_errors(_OPENAI_ERRORS, OpenAIError)}


def tgi_responses(model: Any, stream: str | None = None) -> dict[int | str, dict[str, Any]]:
    ok: dict[str, Any] = {"model": model, "description": "The generation"}
    if stream is not None:
        ok["description"] = f"Server-sent events: {stream}"
        ok["content"] = {"text/event-stream": _SSE}
    return {200: ok, **_errors(_TGI_ERRORS, TGIError)}


def ops_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OpenAIError, "description": _OPENAI_ERRORS[code]} for code in codes}


def _limit_strings(prop: dict[str, Any], max_items: int, max_length: int) -> None:
    """Bound every string (maxLength) and array (maxItems) inside a stop-like property."""
    for option in prop.get("anyOf", [prop]):
        if option.get("type") == "string":
            option["maxLength"] = max_length
        if option.get("type") == "array":
            option["maxItems"] = max_items
            option.setdefault("items", {})["maxLength"] = max_length


def _apply_limits(doc: dict[str, Any], gw: Gateway) -> None:
    """Write this server's limits (flags, engine batch) into the request schemas."""
    schemas = doc.get("components", {}).get("schemas", {})
    settings = gw.settings
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        props = schemas.get(name, {}).get("properties", {})
        for field in ("n", "best_of"):
            for option in props.get(field, {}).get("anyOf", [props.get(field, {})]):
                if option.get("type") == "integer":
                    option["maximum"] = gw.max_n
        if "stop" in props:
            _limit_strings(props["stop"], settings.max_stop_sequences, settings.max_stop_length)
        for option in props.get("prompt", {}).get("anyOf", []):
            if option.get("type") == "array":
                items = option.get("items", {})
                if items.get("type") in ("string", "array"):  # a list of prompts
                    option["maxItems"] = settings.max_prompts
    tgi = schemas.get("GenerateParameters", {}).get("properties", {})
    if "stop" in tgi:
        _limit_strings(tgi["stop"], settings.max_stop_sequences, settings.max_stop_length)


def install_openapi(app: FastAPI, gw: Gateway, public_paths: frozenset[str]) -> None:
    """Post-process FastAPI's document: this server's limits, no stray 422s on OpenAI
    routes, the API key scheme when one is required."""
    api_key_required = gw.settings.api_key is not None

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        _apply_limits(doc, gw)
        for path, item in doc.get("paths", {}).items():
            for operation in item.values():
                responses = operation.get("responses", {})
                if not is_tgi_path(path):
                    responses.pop("422", None)  # FastAPI's default; these routes answer 400
                if api_key_required and path not in public_paths:
                    operation["security"] = [{"bearerAuth": []}]
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            if not any(name in str(item) for item in doc.get("paths", {}).values()):
                schemas.pop(name, None)
        if api_key_required:
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <api key>` (or `x-api-key`)",
                }
            }
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]
