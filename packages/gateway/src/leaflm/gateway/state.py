"""The per-app state every route reads: engine, settings, admission, metrics, tokenizer."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from leaflm.gateway.admission import Admission
from leaflm.gateway.errors import APIError
from leaflm.gateway.metrics import Metrics
from leaflm.gateway.settings import GatewaySettings


class Gateway:
    """Binds one engine (anything with AsyncLLM's interface) to one app."""

    def __init__(self, engine: Any | None, settings: GatewaySettings) -> None:
        self.settings = settings
        self.admission = Admission(settings.max_queue, settings.retry_after_s)
        self.metrics = Metrics(self._stats)
        self.engine: Any | None = None
        self.tokenizer: Any | None = None
        self.max_token_bytes = 1
        self.in_flight_ids: set[str] = set()
        self.stop_reason: str | None = None  # why in-flight requests were aborted, if so
        if engine is not None:
            self.attach(engine)

    def attach(self, engine: Any) -> None:
        """Serve `engine` from now on (the server may start before the model is loaded)."""
        self.engine = engine
        self.tokenizer = engine.get_tokenizer()
        self.max_token_bytes = max_token_bytes(self.tokenizer)
        self.admission.ready = True

    def _stats(self) -> Any | None:
        return self.engine.stats() if self.engine is not None else None

    @property
    def model_name(self) -> str:
        if self.settings.served_model_name:
            return self.settings.served_model_name
        config = self.engine.model_config if self.engine is not None else None
        name = getattr(config, "served_name", None) or getattr(config, "model", None)
        return str(name) if name else "leaflm"

    @property
    def max_model_len(self) -> int:
        if self.engine is None:
            raise APIError(503, "The engine is not ready yet.", retry_after=1)
        return int(self.engine.model_config.max_model_len)

    @property
    def max_n(self) -> int:
        """Most completions per request: the setting, within the engine's batch."""
        args = getattr(getattr(self.engine, "engine", None), "args", None)
        max_num_seqs = getattr(args, "max_num_seqs", None)
        if isinstance(max_num_seqs, int):
            return min(self.settings.max_n, max_num_seqs)
        return self.settings.max_n

    async def abort_in_flight(self, reason: str) -> None:
        """Abort every running request; their streams end with `reason` as an error."""
        self.stop_reason = reason
        if self.engine is None:
            return
        for request_id in list(self.in_flight_ids):
            await self.engine.abort(request_id)

    def check_model(self, requested: str | None) -> None:
        """404 unless `requested` names the served model (or its path)."""
        if requested is None or requested == self.model_name or requested in ANY_MODEL:
            return
        if requested.startswith(("http://", "https://")):
            return  # huggingface_hub's InferenceClient(base_url=...) sends its URL as the model
        root = getattr(self.engine.model_config, "model", None) if self.engine else None
        if root is not None and requested == str(root):
            return
        raise APIError(
            404,
            f"The model '{requested}' does not exist. This server serves '{self.model_name}'.",
            param="model",
            code="model_not_found",
        )

    def admit(self) -> None:
        """Readiness and queue checks for one generation request; pair with `done`.

        The API key was already checked by `APIKeyMiddleware`.
        """
        try:
            self.admission.acquire()
        except APIError as err:
            self.metrics.rejected.labels(status=str(err.status)).inc()
            raise
        self.metrics.in_flight.set(self.admission.in_flight)

    def done(self) -> None:
        self.admission.release()
        self.metrics.in_flight.set(self.admission.in_flight)


ANY_MODEL = frozenset({"tgi", "dummy"})
"""Placeholder model names TGI clients send (huggingface_hub: "tgi", later "dummy"); TGI
serves one model and ignores the field."""


def max_token_bytes(tokenizer: Any) -> int:
    """An upper bound on the UTF-8 bytes any one token decodes to (vocabulary strings are at
    least as long as the bytes they stand for: byte-level and SentencePiece alike)."""
    vocab = getattr(tokenizer, "get_vocab", None)
    pieces = vocab().keys() if vocab is not None else ()
    return max((len(p.encode("utf-8")) for p in pieces), default=64) or 1


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway
