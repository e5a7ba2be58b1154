"""Typed results. Unknown fields are kept (extra="allow") so newer servers stay readable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(_Model):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(_Model):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(_Model):
    """A /v1/completions response, or one streamed chunk of it."""

    id: str
    object: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


CompletionChunk = Completion


class TopLogprob(_Model):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(_Model):
    content: list[TokenLogprob] | None = None


class ChatMessage(_Model):
    role: str
    content: str | None = None


class ChatChoice(_Model):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletion(_Model):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_Model):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(_Model):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Model):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(_Model):
    id: str
    object: str = "model"
    owned_by: str | None = None
    max_model_len: int | None = None


class ModelList(_Model):
    object: str = "list"
    data: list[ModelCard]


class Token(_Model):
    id: int
    text: str
    logprob: float | None = None
    special: bool = False


class GenerationDetails(_Model):
    finish_reason: str
    generated_tokens: int
    seed: int | None = None
    prefill: list[Token] = []
    tokens: list[Token] = []


class Generation(_Model):
    """A TGI /generate response."""

    generated_text: str
    details: GenerationDetails | None = None


class StreamDetails(_Model):
    finish_reason: str
    generated_tokens: int
    seed: int | None = None
    input_length: int | None = None


class StreamEvent(_Model):
    """One TGI /generate_stream event; the last carries generated_text and details."""

    index: int
    token: Token
    generated_text: str | None = None
    details: StreamDetails | None = None


class Health(_Model):
    ok: bool
    status: str
