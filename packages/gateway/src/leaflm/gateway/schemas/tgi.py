"""Text Generation Inference (TGI) request and response bodies.

TGI clients (huggingface_hub's InferenceClient, text-generation) send every parameter,
mostly as null, and sampling values such as `temperature: 0.01` or `top_p: 0.99`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from leaflm.gateway.schemas.types import Int, NonEmptyStr, Num, StrictBool, StrictInt, Unsupported

FinishReason = Literal["length", "eos_token", "stop_sequence"]


class GenerateParameters(BaseModel):
    best_of: Int(ge=1, le=8) | None = None  # type: ignore[valid-type]
    decoder_input_details: StrictBool = False
    details: StrictBool = False
    do_sample: StrictBool = False
    frequency_penalty: Num(ge=-2, le=2) | None = None  # type: ignore[valid-type]
    max_new_tokens: Int(ge=1) | None = None  # type: ignore[valid-type]
    repetition_penalty: Num(gt=0) | None = None  # type: ignore[valid-type]
    return_full_text: StrictBool | None = None
    seed: StrictInt | None = None
    stop: list[NonEmptyStr] | None = None
    temperature: Num(gt=0) | None = None  # type: ignore[valid-type]
    top_k: Int(gt=0) | None = None  # type: ignore[valid-type]
    top_n_tokens: Int(ge=0, le=20) | None = None  # type: ignore[valid-type]
    top_p: Num(gt=0, le=1) | None = None  # type: ignore[valid-type]
    truncate: Int(ge=0) | None = None  # type: ignore[valid-type]
    typical_p: Unsupported = None
    watermark: Literal[False] = False  # not implemented: true is a 422
    grammar: dict[str, Any] | None = None  # {"type": "json" | "regex", "value": ...}
    adapter_id: Unsupported = None  # LoRA adapters


class GenerateRequest(BaseModel):
    inputs: NonEmptyStr
    parameters: GenerateParameters | None = None
    stream: StrictBool = False


class Token(BaseModel):
    id: int
    text: str
    logprob: float
    special: bool


class PrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None = None


class BestOfSequence(BaseModel):
    generated_text: str
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = None
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = None


class Details(BaseModel):
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = None
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = None
    best_of_sequences: list[BestOfSequence] | None = None


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamDetails(BaseModel):
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = None
    input_length: int


class StreamResponse(BaseModel):
    index: int
    token: Token
    top_tokens: list[Token] | None = None
    generated_text: str | None = None
    details: StreamDetails | None = None


class ErrorResponse(BaseModel):
    """TGI's error body (422 for validation); huggingface_hub maps error_type to exceptions."""

    error: str
    error_type: str


class Info(BaseModel):
    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str = "text-generation"
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_top_n_tokens: int
    max_input_tokens: int
    max_total_tokens: int
    validation_workers: int = 1
    max_client_batch_size: int = 1
    router: str = "leaflm"
    version: str
    sha: str | None = None
    docker_label: str | None = None
