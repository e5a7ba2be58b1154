"""Every error leaves the server in the caller's dialect, never as a bare 500 or 422.

OpenAI routes answer `{"error": {"message", "type", "param", "code"}}`; TGI routes answer
TGI's `{"error": message, "error_type": kind}` (huggingface_hub parses that into typed
exceptions). FastAPI's own validation errors and malformed JSON go through the same path.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from leaflm.gateway.validation_messages import best_errors, field_path, sentence

logger = logging.getLogger("leaflm.gateway")

TGI_PATHS = ("/", "/generate", "/generate_stream")

UNSUPPORTED = frozenset(
    {"functions", "function_call", "suffix", "typical_p", "adapter_id", "watermark"}
)  # fmt: skip
"""Parameters leaflm knows and does not implement (typed `null` in the request schemas):
setting one is a 400 (TGI: 422) that names it, never a silently ignored field."""

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}
_TGI_TYPES = {
    400: "validation",
    401: "authentication",
    413: "validation",
    404: "not_found",
    429: "overloaded",
    500: "generation",
    503: "unhealthy",
}


class APIError(Exception):
    """An error to report to the client: HTTP status, message, offending parameter."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def from_value_error(exc: ValueError, known_fields: tuple[str, ...] = ()) -> APIError:
    """A 400 for an engine ValueError, whose message starts with the field it names."""
    message = str(exc)
    first = message.split(" ", 1)[0]
    param = first if first in known_fields else None
    return APIError(400, message, param=param)


def is_tgi_path(path: str) -> bool:
    return path in TGI_PATHS


def error_body(path: str, err: APIError) -> tuple[int, dict[str, Any]]:
    """(status, body) in the dialect of the route at `path`."""
    if is_tgi_path(path):
        # TGI reports request validation problems as 422 with error_type "validation".
        status = 422 if err.status == 400 else err.status
        return status, {"error": err.message, "error_type": _TGI_TYPES.get(err.status, "error")}
    body = {
        "message": err.message,
        "type": _OPENAI_TYPES.get(err.status, "invalid_request_error"),
        "param": err.param,
        "code": err.code if err.code is not None else err.status,
    }
    return err.status, {"error": body}


def error_response(path: str, err: APIError) -> JSONResponse:
    status, body = error_body(path, err)
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="leaflm"'
    return JSONResponse(body, status_code=status, headers=headers or None)


def describe_validation(exc: RequestValidationError) -> APIError:
    """One readable message for pydantic's error list, naming the first bad field."""
    errors = exc.errors()
    if not errors:
        return bad_request("Invalid request body.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        detail = ctx.get("error", first.get("msg", ""))
        loc = first.get("loc", ())
        where = f" at position {loc[1]}" if len(loc) > 1 else ""
        return bad_request(f"Malformed JSON body{where}: {detail}")
    chosen = best_errors(errors)
    path = field_path(chosen[0])
    param = path[0] if path else None
    if path and path[-1] in UNSUPPORTED:  # documented as null: say why, not "should be None"
        return bad_request(f"{path[-1]} is not supported by leaflm", param=path[-1])
    message = "; ".join(sentence(e) for e in chosen[:3])
    if param is None and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        return bad_request("Request body must be a JSON object: " + message)
    return bad_request(message, param=param)


def internal_error(exc: BaseException) -> APIError:
    """What a client learns of an unexpected failure: the engine's own account when its
    workers failed (the server is unhealthy from then on: say so), else only the type."""
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__name__ == "WorkerFailedError":  # leaflm.engine.executor
            return APIError(503, f"The engine failed: {cause}")
        cause = cause.__cause__
    text = str(exc)
    if isinstance(exc, MemoryError) or "allocate memory" in text or "out of memory" in text:
        # This request's allocation failed; the server lives on.
        return APIError(503, "Not enough memory for this request; retry smaller.")
    return APIError(500, f"Internal server error ({type(exc).__name__}); see the server log.")


def install_handlers(app: FastAPI) -> None:
    """Route FastAPI's exceptions and ours through `error_response`."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"Not found: {request.method} {request.url.path}"
        return error_response(request.url.path, APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(request.url.path, internal_error(exc))
