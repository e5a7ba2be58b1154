"""When and how long to wait before retrying: exponential backoff that honours Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({429, 503})
#: transport failures both clients retry under their RetryPolicy
RETRYABLE_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry 429/503 answers and connection failures up to `max_retries` times.

    The n-th wait is `backoff_s * 2**n` (capped at `max_backoff_s`, with 10% jitter), or the
    server's Retry-After when it sends one (capped the same way).
    """

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")

    def should_retry(self, attempt: int, status: int | None) -> bool:
        """`status` None means the connection failed."""
        return attempt < self.max_retries and (status is None or status in RETRY_STATUSES)

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff_s)
            except ValueError:
                pass  # an HTTP date; fall back to our own backoff
        base = min(self.backoff_s * (2**attempt), self.max_backoff_s)
        return base * (1.0 + 0.1 * random.random())
