"""Gateway settings: what `leaflm serve` passes to `create_app` besides the engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GatewaySettings:
    """Server-side knobs (engine knobs belong to the engine).

    Attributes:
        api_key: when set, generation and tokenizer routes need `Authorization: Bearer <key>`.
        served_model_name: the model id clients send and /v1/models lists; defaults to the
            engine's own served name.
        max_queue: most generation requests held at once; more get 429 (None = no limit).
        retry_after_s: the Retry-After header value on 429 and 503.
        tgi_default_max_new_tokens: TGI's default when a request sets no max_new_tokens.
        shutdown_engine: call `engine.shutdown()` when the app stops (the CLI owns its engine).
    """

    api_key: str | None = None
    served_model_name: str | None = None
    max_queue: int | None = None
    retry_after_s: int = 1
    tgi_default_max_new_tokens: int = 100
    shutdown_engine: bool = False

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string or None")
        if self.max_queue is not None and self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1 or None, got {self.max_queue}")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
