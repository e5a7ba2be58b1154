"""POST /v1/completions: OpenAI's legacy completions, streamed or not.

A request may carry several prompts; each becomes one engine request (with `n`
completions), and choice `index` is `prompt_index * n + completion_index` as OpenAI numbers them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

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
from leaflm.gateway.limits import check_prompt_count, check_prompt_size
from leaflm.gateway.logprobs import completion_logprobs, prompt_logprobs_json
from leaflm.gateway.openapi import openai_responses
from leaflm.gateway.routes.common import first_or_400, now, serve_generation
from leaflm.gateway.sampling import (
    check_max_tokens,
    completion_params,
    openai_finish_reason,
    precompile,
    validate_openai,
)
from leaflm.gateway.schemas.openai import Completion, CompletionRequest
from leaflm.gateway.state import Gateway
from leaflm.gateway.streams import SSE_DONE, close_quietly, sse
from leaflm.gateway.structured import structured_param, truncate_prompts

router = APIRouter()


def _split_prompts(gw: Gateway, prompt: Any) -> list[str | list[int]]:
    """The request's prompts, each checked for count and size before any is tokenized."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    elif all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    check_prompt_count(gw, len(prompts))
    for p in prompts:
        if isinstance(p, str):
            check_prompt_size(gw, p)
        elif len(p) >= gw.max_model_len:
            check_max_tokens(1, len(p), gw.max_model_len)  # the context-length 400
    return prompts


def _tokenize_all(gw: Gateway, prompts: list[str | list[int]]) -> list[Prompt]:
    return [tokenize_prompt(gw, p) for p in prompts]


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


def _drop_generated(results: list[PromptResult]) -> None:
    """max_tokens 0: the prompt is scored by one engine step (for echo and logprobs, as
    lm-eval and vLLM clients ask it); that step's token is dropped."""
    for r in results:
        for c in r.completions.values():
            c.text, c.token_ids, c.finish_reason = "", [], "length"
            c.logprobs = [] if c.logprobs is not None else None


def _response(gw: Gateway, body: CompletionRequest, rid: str, results: list[PromptResult]) -> dict:
    if body.max_tokens == 0:
        _drop_generated(results)
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
                    "prompt_logprobs": (
                        prompt_logprobs_json(r.prompt_logprobs)
                        if body.prompt_logprobs is not None
                        else None
                    ),
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
                choice = {
                    "index": i * body.n + c.index,
                    "text": text,
                    "logprobs": lp,
                    "finish_reason": openai_finish_reason(c.finish_reason),
                }
                if echo_now and body.prompt_logprobs is not None:
                    choice["prompt_logprobs"] = prompt_logprobs_json(r.prompt_logprobs)
                chunk = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": gw.model_name,
                    "choices": [choice],  # one choice per chunk, as OpenAI streams n > 1
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


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses=openai_responses(Completion, "a `text_completion` object per choice delta"),
)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    async def respond(gw: Gateway) -> Any:
        validate_openai(gw, body)
        if body.stream and body.max_tokens == 0:
            raise bad_request(
                "max_tokens=0 (prompt scoring) cannot be streamed", param="max_tokens"
            )
        prompts = await run_in_threadpool(_tokenize_all, gw, _split_prompts(gw, body.prompt))
        prompts = truncate_prompts(gw, prompts, body.truncate_prompt_tokens)
        params = [
            completion_params(
                body,
                check_max_tokens(
                    body.max_tokens, len(p.token_ids), gw.max_model_len, allow_zero=True
                ),
            )
            for p in prompts
        ]
        await run_in_threadpool(precompile, gw, params, structured_param(body))
        rid = new_id("cmpl")
        if body.stream:
            outputs = await first_or_400(run(gw, prompts, params, rid))
            return _stream(gw, body, rid, prompts, outputs), None
        return _response(gw, body, rid, await collect(gw, prompts, params, rid))

    return await serve_generation(request, body.model, respond)
