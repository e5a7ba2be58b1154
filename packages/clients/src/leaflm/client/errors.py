"""Errors the client raises: one for HTTP error responses, one for the transport."""

from __future__ import annotations

from typing import Any


class LeaflmError(Exception):
    """Base class of the client's errors."""


class LeaflmAPIError(LeaflmError):
    """The server answered with an error status (OpenAI or TGI error body)."""

    def __init__(
        self, status: int, message: str, type: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(f"{status} {type or 'error'}: {message}")
        self.status = status
        self.message = message
        self.type = type
        self.param = param

    @classmethod
    def from_body(cls, status: int, body: Any, text: str = "") -> LeaflmAPIError:
        """Read `{"error": {...}}` (OpenAI) or `{"error": str, "error_type": str}` (TGI)."""
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict):
                return cls(status, str(err.get("message", "")), err.get("type"), err.get("param"))
            if isinstance(err, str):
                return cls(status, err, body.get("error_type"))
            if "message" in body:
                return cls(status, str(body["message"]), body.get("status"))
        return cls(status, text or "unknown error")


class LeaflmConnectionError(LeaflmError):
    """The server could not be reached or did not answer in time (after retries)."""
