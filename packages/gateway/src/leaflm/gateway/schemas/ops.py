"""Bodies of the operational endpoints: tokenize, detokenize, version (vLLM's shapes)."""

from __future__ import annotations

from pydantic import BaseModel

from leaflm.gateway.schemas.openai import ChatMessage


class TokenizeRequest(BaseModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str
    engine_version: str | None = None
