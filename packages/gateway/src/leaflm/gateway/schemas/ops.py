"""Bodies of the operational endpoints: tokenize, detokenize, version (vLLM's shapes)."""

from __future__ import annotations

from pydantic import BaseModel

from leaflm.gateway.schemas.openai import ChatMessage
from leaflm.gateway.schemas.types import StrictBool, StrictStr, TokenId


class TokenizeRequest(BaseModel):
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: StrictBool = True
    add_generation_prompt: StrictBool = True


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(BaseModel):
    model: StrictStr | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


class HealthResponse(BaseModel):
    status: str
    message: str | None = None


class VersionResponse(BaseModel):
    version: str
    engine_version: str | None = None
