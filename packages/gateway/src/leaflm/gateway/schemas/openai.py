"""OpenAI request and response bodies, shaped as the official API sends them.

Requests accept vLLM's sampling extras (top_k, min_p, ...) and ignore unknown fields, so
clients written for OpenAI or vLLM work unchanged. Field types are strict (no booleans as
numbers, no NaN); value ranges are checked by `SamplingParams` and the gateway's limits and
reported as 400s. Response models document what each route returns.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from leaflm.gateway.schemas.types import (
    Int,
    NonEmptyStr,
    Num,
    StrictBool,
    StrictInt,
    StrictStr,
    TokenId,
    Unsupported,
)

TokenIdKey = Annotated[str, Field(pattern=r"^[0-9]+$")]
"""A token id as a JSON object key (`logit_bias`)."""


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class SamplingExtras(BaseModel):
    """Fields shared by completions and chat requests."""

    model: StrictStr | None = None
    n: Int(ge=1) = 1  # type: ignore[valid-type]
    best_of: Int(ge=1) | None = None  # type: ignore[valid-type]
    temperature: Num(ge=0) | None = None  # type: ignore[valid-type]
    top_p: Num(gt=0, le=1) | None = None  # type: ignore[valid-type]
    stop: NonEmptyStr | list[NonEmptyStr] | None = None
    seed: StrictInt | None = None
    presence_penalty: Num(ge=-2, le=2) = 0.0  # type: ignore[valid-type]
    frequency_penalty: Num(ge=-2, le=2) = 0.0  # type: ignore[valid-type]
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    # vLLM extras
    top_k: Int(ge=-1) | None = None  # type: ignore[valid-type]  # 0 and -1: no top-k
    min_p: Num(ge=0, le=1) | None = None  # type: ignore[valid-type]
    repetition_penalty: Num(gt=0) | None = None  # type: ignore[valid-type]
    ignore_eos: StrictBool = False
    min_tokens: Int(ge=0) = 0  # type: ignore[valid-type]
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: StrictBool = True
    include_stop_str_in_output: StrictBool = False
    prompt_logprobs: Int(ge=0, le=20) | None = None  # type: ignore[valid-type]
    return_tokens_as_token_ids: StrictBool = False  # logprob tokens as "token_id:<id>" (vLLM)
    # Logit controls and structured outputs (gateway/structured.py), beam search (vLLM).
    logit_bias: dict[TokenIdKey, Num(ge=-100, le=100)] | None = None  # type: ignore[valid-type]
    allowed_token_ids: Annotated[list[TokenId], Field(min_length=1)] | None = None
    bad_words: list[NonEmptyStr] | None = None
    truncate_prompt_tokens: Int(ge=1) | None = None  # type: ignore[valid-type]
    response_format: dict[str, Any] | None = (
        None  # {"type": "text" | "json_object" | "json_schema"}
    )
    structured_outputs: dict[str, Any] | None = None  # one of json, regex, choice, grammar
    guided_json: NonEmptyStr | dict[str, Any] | None = None
    guided_regex: NonEmptyStr | None = None
    guided_choice: Annotated[list[NonEmptyStr], Field(min_length=1)] | None = None
    guided_grammar: NonEmptyStr | None = None
    use_beam_search: StrictBool = False
    length_penalty: Num() = 1.0  # type: ignore[valid-type]
    # Known but not implemented: typed null, a 400 naming them when set (errors.UNSUPPORTED).
    functions: Unsupported = None
    function_call: Unsupported = None


class CompletionRequest(SamplingExtras):
    prompt: (
        NonEmptyStr
        | Annotated[list[NonEmptyStr], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    max_tokens: Int(ge=0) | None = 16  # type: ignore[valid-type]  # 0: score only
    logprobs: Int(ge=0, le=20) | None = None  # type: ignore[valid-type]
    echo: StrictBool = False
    suffix: Unsupported = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: StrictStr
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None


class ChatCompletionRequest(SamplingExtras):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    # Tool calling (gateway/tools.py).
    tools: list[dict[str, Any]] | None = None  # [{"type": "function", "function": {...}}]
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    max_tokens: Int(ge=1) | None = None  # type: ignore[valid-type]
    max_completion_tokens: Int(ge=1) | None = None  # type: ignore[valid-type]
    logprobs: StrictBool = False
    top_logprobs: Int(ge=0, le=20) | None = None  # type: ignore[valid-type]
    add_generation_prompt: StrictBool = True


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    """vLLM's shape of one token's entry in `prompt_logprobs`."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


PromptLogprobs = list[dict[str, PromptLogprob] | None]
"""Per prompt position: token id (as a JSON key) -> entry; the first position is null."""


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    prompt_logprobs: PromptLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as a string


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    prompt_logprobs: PromptLogprobs | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's tool-call deltas (with index)


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "leaflm"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body, also sent as the last SSE event when a stream fails."""

    error: ErrorDetail


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict; optional fields OpenAI always sends (as null) stay in."""
    return model.model_dump(mode="json")
