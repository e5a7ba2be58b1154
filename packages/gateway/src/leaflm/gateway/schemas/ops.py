"""Bodies of the operational endpoints: tokenize, detokenize, version (vLLM's shapes)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from leaflm.gateway.schemas.openai import ChatMessage
from leaflm.gateway.schemas.types import StrictBool, StrictStr, TokenId


class TokenizeRequest(BaseModel):
    """Exactly one of `prompt` and `messages` (vLLM's two forms)."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]}
    )
    model: StrictStr | None = None
    prompt: StrictStr = None  # type: ignore[assignment]  # absent, never null
    messages: Annotated[list[ChatMessage], Field(min_length=1)] = None  # type: ignore[assignment]
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
