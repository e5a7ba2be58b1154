"""POST /v1/completions: OpenAI's legacy completions, streamed or not.

A request may carry several prompts; each becomes one engine request (with `n`
completions), and choice `index` is `prompt_index * n + completion_index` as OpenAI numbers them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from leaflm.gateway.errors import bad_request
from leaflm.gateway.generation import (
    Prompt,
    PromptResult,
    collect,
    new_id,
    run,
    tokenize_prompt,
    usage,
)
from leaflm.gateway.logprobs import completion_logprobs
from leaflm.gateway.routes.common import first_or_400, now, serve_generation
from leaflm.gateway.sampling import check_max_tokens, completion_params, openai_finish_reason
from leaflm.gateway.schemas.openai import CompletionRequest
from leaflm.gateway.state import Gateway
from leaflm.gateway.streams import SSE_DONE, close_quietly, sse

router = APIRouter()


def _prompts(gw: Gateway, prompt: Any) -> list[Prompt]:
    if isinstance(prompt, str):
        return [tokenize_prompt(gw, prompt)]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [tokenize_prompt(gw, prompt)]
    return [tokenize_prompt(gw, p) for p in prompt]


def _logprobs_for(
    gw: Gateway, body: CompletionRequest, prompt: Prompt, token_ids: list[int], positions: Any,
    prompt_logprobs: Any, echo_prefix: bool, offset: int,
) -> dict[str, Any] | None:  # fmt: skip
    if body.logprobs is None:
        return None
    ids, pos = list(token_ids), list(positions or [None] * len(token_ids))
    if echo_prefix:
        prompt_pos = list(prompt_logprobs or [None] * len(prompt.token_ids))
        ids, pos, offset = list(prompt.token_ids) + ids, prompt_pos + pos, 0
    return completion_logprobs(
        gw.tokenizer, ids, pos, body.logprobs, offset, body.return_tokens_as_token_ids
    )


def _response(gw: Gateway, body: CompletionRequest, rid: str, results: list[PromptResult]) -> dict:
    choices = []
    for i, r in enumerate(results):
        for j, c in enumerate(r.ordered()):
            prefix = r.prompt.text if body.echo else ""
            lp = _logprobs_for(
                gw, body, r.prompt, c.token_ids, c.logprobs, r.prompt_logprobs, body.echo, 0
            )
            choices.append(
                {
                    "index": i * body.n + j,
                    "text": prefix + c.text,
                    "logprobs": lp,
                    "finish_reason": openai_finish_reason(c.finish_reason),
                }
            )
    return {
        "id": rid,
        "object": "text_completion",
        "created": now(),
        "model": gw.model_name,
        "choices": choices,
        "usage": usage(results),
        "system_fingerprint": None,
    }


async def _stream(
    gw: Gateway, body: CompletionRequest, rid: str, prompts: list[Prompt],
    outputs: AsyncIterator[tuple[int, Any]],
) -> AsyncIterator[str]:  # fmt: skip
    created, include_usage = now(), bool(body.stream_options and body.stream_options.include_usage)
    results = [PromptResult(p) for p in prompts]
    started: set[tuple[int, int]] = set()
    offsets: dict[tuple[int, int], int] = {}
    try:
        async for i, out in outputs:
            r = results[i]
            r.add(out)
            choices = []
            for c in out.outputs:
                key = (i, c.index)
                echo_now = body.echo and key not in started
                started.add(key)
                text = (r.prompt.text if echo_now else "") + c.text
                lp = _logprobs_for(
                    gw, body, r.prompt, c.token_ids, c.logprobs, r.prompt_logprobs, echo_now,
                    offsets.get(key, len(r.prompt.text) if body.echo else 0),
                )  # fmt: skip
                offsets[key] = offsets.get(key, len(r.prompt.text) if body.echo else 0) + len(
                    c.text
                )
                choices.append(
                    {
                        "index": i * body.n + c.index,
                        "text": text,
                        "logprobs": lp,
                        "finish_reason": openai_finish_reason(c.finish_reason),
                    }
                )
            if not choices:
                continue
            chunk = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": gw.model_name,
                "choices": choices,
                "system_fingerprint": None,
            }
            if include_usage:
                chunk["usage"] = None
            yield sse(chunk)
        if include_usage:
            yield sse(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": gw.model_name,
                    "choices": [],
                    "usage": usage(results),
                    "system_fingerprint": None,
                }
            )
        yield SSE_DONE
    finally:
        await close_quietly(outputs)


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    async def respond(gw: Gateway) -> Any:
        if body.suffix:
            raise bad_request("suffix is not supported", param="suffix")
        prompts = _prompts(gw, body.prompt)
        params = [
            completion_params(
                body, check_max_tokens(body.max_tokens, len(p.token_ids), gw.max_model_len)
            )
            for p in prompts
        ]
        rid = new_id("cmpl")
        if body.stream:
            outputs = await first_or_400(run(gw, prompts, params, rid))
            return _stream(gw, body, rid, prompts, outputs), None
        return _response(gw, body, rid, await collect(gw, prompts, params, rid))

    return await serve_generation(request, body.model, respond)
