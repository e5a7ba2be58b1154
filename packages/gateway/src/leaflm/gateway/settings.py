"""Gateway settings: what `leaflm serve` passes to `create_app` besides the engine."""

from __future__ import annotations

from dataclasses import dataclass, field


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
        max_n: most completions (n, best_of) one request may ask for; the engine's
            max_num_seqs caps it further.
        max_stop_sequences / max_stop_length: how many stop strings, and how long each.
        max_prompts: most prompts in one completions request (a list prompt).
        max_request_body_bytes: larger bodies get 413 before they are read whole.
        allowed_origins / allowed_methods / allowed_headers / allow_credentials: CORS, as
            vLLM names the flags; no CORS headers at all when allowed_origins is None.
        shutdown_timeout_s: on SIGTERM, how long in-flight requests may finish before they
            are aborted with a final error event.
        timeout_keep_alive_s: idle keep-alive connections are closed after this long.
        timeout_request_header_s: a connection that has not sent a whole request head
            within this long is closed (slow or idle clients cannot hold sockets).
        limit_concurrency: most connections at once; more get 503 (None = no limit).
        tool_call_parser: how `tool_choice: "auto"` answers are read for tool calls:
            "hermes" (`<tool_call>` JSON blocks) or "json" (the whole answer is the call).
    """

    api_key: str | None = None
    served_model_name: str | None = None
    max_queue: int | None = None
    retry_after_s: int = 1
    tgi_default_max_new_tokens: int = 100
    shutdown_engine: bool = False
    max_n: int = 128
    max_stop_sequences: int = 8
    max_stop_length: int = 256
    max_prompts: int = 128
    max_request_body_bytes: int = 16 * 1024 * 1024
    allowed_origins: list[str] | None = None
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    shutdown_timeout_s: float = 30.0
    timeout_keep_alive_s: float = 5.0
    timeout_request_header_s: float = 10.0
    limit_concurrency: int | None = None
    tool_call_parser: str = "hermes"

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string or None")
        if self.max_queue is not None and self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1 or None, got {self.max_queue}")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        for name in ("max_n", "max_stop_sequences", "max_stop_length", "max_prompts",
                     "max_request_body_bytes"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("shutdown_timeout_s", "timeout_keep_alive_s", "timeout_request_header_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.tool_call_parser not in ("hermes", "json"):
            raise ValueError(
                f"tool_call_parser must be 'hermes' or 'json', got {self.tool_call_parser!r}"
            )
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError(
                f"limit_concurrency must be >= 1 or None, got {self.limit_concurrency}"
            )
