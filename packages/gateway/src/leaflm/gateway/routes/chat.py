"""POST /v1/chat/completions: messages through the tokenizer's chat template.

Streams follow OpenAI: each choice's first chunk carries `delta.role = "assistant"`, content
deltas follow, the last chunk of a choice carries its finish_reason, and with
`stream_options.include_usage` a final chunk has empty choices and the usage.
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
    usage,
)
from leaflm.gateway.limits import check_prompt_size
from leaflm.gateway.logprobs import chat_logprobs, prompt_logprobs_json
from leaflm.gateway.openapi import openai_responses
from leaflm.gateway.routes.common import first_or_400, now, serve_generation
from leaflm.gateway.sampling import (
    chat_params,
    check_max_tokens,
    openai_finish_reason,
    precompile,
    validate_openai,
)
from leaflm.gateway.schemas.openai import ChatCompletion, ChatCompletionRequest, ChatMessage
from leaflm.gateway.state import Gateway
from leaflm.gateway.streams import SSE_DONE, close_quietly, sse
from leaflm.gateway.structured import structured_param, truncate_prompts
from leaflm.gateway.tools import (
    ToolPlan,
    ToolStream,
    check_tool_calls,
    constrain,
    message_and_reason,
    plan_tools,
    template_messages,
    template_supports_tools,
)


def _plain(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template expects them (text content only)."""
    if not messages:
        raise bad_request("messages must not be empty", param="messages")
    plain = []
    for i, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise bad_request(
                        f"messages[{i}].content: only text parts are supported, got {part.type!r}",
                        param="messages",
                    )
                texts.append(part.text)
            content = "".join(texts)
        entry: dict[str, Any] = {"role": m.role, "content": content or ""}
        if m.name is not None:  # for templates that tell participants apart (as HF's does)
            entry["name"] = m.name
        extra = m.model_extra or {}
        if m.role == "assistant" and extra.get("tool_calls"):
            entry["tool_calls"] = check_tool_calls(extra["tool_calls"], i)
        if m.role == "tool":
            if not isinstance(extra.get("tool_call_id"), str):
                raise bad_request(f"messages[{i}]: a tool message needs a tool_call_id", "messages")
            entry["tool_call_id"] = extra["tool_call_id"]
        plain.append(entry)
    return plain


def render_chat(
    gw: Gateway,
    messages: list[ChatMessage],
    add_generation_prompt: bool,
    plan: ToolPlan | None = None,
) -> Prompt:
    """The prompt the chat template makes of these messages (CPU work: call it off the loop)."""
    tok = gw.tokenizer
    if not getattr(tok, "chat_template", None):
        raise bad_request("this model has no chat template; use /v1/completions", param="messages")
    plain = _plain(messages)
    check_prompt_size(gw, "".join(m["content"] for m in plain), param="messages")
    plain, tools = template_messages(plain, plan, template_supports_tools(tok))
    try:
        text = tok.apply_chat_template(
            plain, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja raises its own errors for messages it cannot render
        raise bad_request(f"messages could not be rendered by the chat template: {exc}") from exc
    return Prompt(text, list(tok.encode(text, add_special_tokens=False)))


def _choice_logprobs(gw: Gateway, body: ChatCompletionRequest, c: Any) -> dict | None:
    if not body.logprobs or c.logprobs is None:
        return None
    return chat_logprobs(
        gw.tokenizer,
        list(c.token_ids),
        list(c.logprobs),
        body.top_logprobs or 0,
        body.return_tokens_as_token_ids,
    )


def _response(
    gw: Gateway, body: ChatCompletionRequest, rid: str, result: PromptResult,
    plan: ToolPlan | None = None,
) -> dict:  # fmt: skip
    choices = []
    for j, c in enumerate(result.ordered()):
        message, reason = message_and_reason(c.text, openai_finish_reason(c.finish_reason), plan)
        choices.append(
            {
                "index": j,
                "message": message,
                "logprobs": _choice_logprobs(gw, body, c),
                "finish_reason": reason,
            }
        )
    return {
        "id": rid,
        "object": "chat.completion",
        "created": now(),
        "model": gw.model_name,
        "choices": choices,
        "usage": usage([result]),
        "system_fingerprint": None,
        "prompt_logprobs": (
            prompt_logprobs_json(result.prompt_logprobs)
            if body.prompt_logprobs is not None
            else None
        ),
    }


async def _stream(
    gw: Gateway, body: ChatCompletionRequest, rid: str, prompt: Prompt,
    outputs: AsyncIterator[tuple[int, Any]], plan: ToolPlan | None = None,
) -> AsyncIterator[str]:  # fmt: skip
    created, include_usage = now(), bool(body.stream_options and body.stream_options.include_usage)
    result = PromptResult(prompt)

    def chunk(choices: list[dict], usage_: dict | None = None) -> str:
        data = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": gw.model_name,
            "choices": choices,
            "system_fingerprint": None,
        }
        if include_usage:
            data["usage"] = usage_
        return sse(data)

    try:
        for j in range(body.n):  # one choice per chunk, as OpenAI streams n > 1
            yield chunk(
                [{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}]
            )  # fmt: skip
        tool_streams: dict[int, ToolStream] = {}  # tool answers are parsed as they end
        async for _, out in outputs:
            result.add(out)
            for c in out.outputs:
                if plan is not None and plan.choice != "none":
                    ts = tool_streams.setdefault(c.index, ToolStream(plan))
                    text = result.completions[c.index].text
                    content = ts.feed(text)
                    pieces = (
                        [{"delta": {"content": content}, "finish_reason": None}] if content else []
                    )
                    if c.finish_reason is not None:
                        pieces += ts.finish(text, openai_finish_reason(c.finish_reason))
                    for piece in pieces:
                        yield chunk([{"index": c.index, "logprobs": None, **piece}])
                    continue
                choice = {
                    "index": c.index,
                    "delta": {"content": c.text} if c.text or c.finish_reason is None else {},
                    "logprobs": _choice_logprobs(gw, body, c),
                    "finish_reason": openai_finish_reason(c.finish_reason),
                }
                yield chunk([choice])
        if include_usage:
            yield chunk([], usage([result]))
        yield SSE_DONE
    finally:
        await close_quietly(outputs)


router = APIRouter()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=openai_responses(ChatCompletion, "`chat.completion.chunk` objects, one choice each"),
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    async def respond(gw: Gateway) -> Any:
        validate_openai(gw, body)
        plan = plan_tools(body, gw.settings.tool_call_parser)
        prompt = await run_in_threadpool(
            render_chat, gw, body.messages, body.add_generation_prompt, plan
        )
        prompt = truncate_prompts(gw, [prompt], body.truncate_prompt_tokens)[0]
        field = "max_tokens" if body.max_completion_tokens is None else "max_completion_tokens"
        requested = getattr(body, field)
        max_tokens = check_max_tokens(requested, len(prompt.token_ids), gw.max_model_len, field)
        params = constrain(chat_params(body, max_tokens), plan)
        param = "tools" if plan is not None and plan.schema() else structured_param(body)
        await run_in_threadpool(precompile, gw, [params], param)
        rid = new_id("chatcmpl")
        if body.stream:
            outputs = await first_or_400(run(gw, [prompt], [params], rid))
            return _stream(gw, body, rid, prompt, outputs, plan), None
        results = await collect(gw, [prompt], [params], rid)
        return _response(gw, body, rid, results[0], plan)

    return await serve_generation(request, body.model, respond)
