"""Structured outputs and tool calls on the embedded default model (SmolLM2-135M-Instruct)
through a real server and the official openai SDK: sampled JSON-schema answers all parse and
validate with `jsonschema`, regex and choice answers always match, tool_choice="required"
always yields a valid call of a declared function, streaming equals non-streaming at
temperature 0. One server for the module; small max_tokens keep it quick on a CPU."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

KEY = "default-model-key"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "integer", "minimum": 10000, "maximum": 99999}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "address"],
    "additionalProperties": False,
}  # fmt: skip
ORDER = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": {"enum": ["apple", "pear", "plum"]}, "minItems": 1, "maxItems": 3},
        "express": {"type": "boolean"},
        "count": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["items", "express", "count"],
    "additionalProperties": False,
}  # fmt: skip
RATING = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "verdict": {"enum": ["good", "bad", "unsure"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 2},
    },
    "required": ["score", "verdict", "tags"],
    "additionalProperties": False,
}  # fmt: skip
SCHEMAS = [("person", PERSON), ("order", ORDER), ("rating", RATING)]
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather forecast for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers",
        "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
            "b": {"type": "integer", "minimum": -1000, "maximum": 1000}},
            "required": ["a", "b"], "additionalProperties": False}}},
]  # fmt: skip
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def client():
    from openai import OpenAI

    from leaflm.engine import AsyncLLM
    from leaflm.gateway.server import ServerThread
    from leaflm.gateway.settings import GatewaySettings

    engine = AsyncLLM(kv_cache_memory="256MiB", max_model_len=2048, seed=0)
    try:
        with (
            ServerThread(engine, GatewaySettings(api_key=KEY)) as srv,
            OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, max_retries=0, timeout=300) as c,
        ):
            yield c
    finally:
        asyncio.run(engine.shutdown())


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_json_schema_sampled_answers_validate(client, model):
    def ask(k):
        name, schema = SCHEMAS[k % len(SCHEMAS)]
        rf = {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        }
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Give me a {name} as JSON."}],
            response_format=rf, temperature=0.8, max_tokens=96, seed=k,
        )  # fmt: skip
        return schema, r.choices[0]

    with ThreadPoolExecutor(20) as pool:  # concurrent: the engine batches them
        answers = list(pool.map(ask, range(20)))
    for schema, choice in answers:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_regex_and_choice_always_match(client, model):
    regex = r"\d{3}-[A-Z]{2}"
    choices = ["Paris", "London", "New York"]

    def ask(k):
        extra = {"structured_outputs": {"regex": regex}} if k % 2 else {"guided_choice": choices}
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Which city is best?"}],
            temperature=0.8, max_tokens=16, seed=k, extra_body=extra,
        )  # fmt: skip
        return k, r.choices[0].message.content

    with ThreadPoolExecutor(10) as pool:
        for k, text in pool.map(ask, range(10)):
            assert re.fullmatch(regex, text) if k % 2 else text in choices, text


def test_tool_choice_required_yields_valid_calls(client, model):
    def ask(k):
        r = client.chat.completions.create(
            model=model, tools=TOOLS, tool_choice="required", temperature=0.8, seed=k,
            max_tokens=64, parallel_tool_calls=False,
            messages=[{"role": "user", "content": ["What is 2 + 3?", "Weather in Oslo?"][k % 2]}],
        )  # fmt: skip
        return r.choices[0]

    with ThreadPoolExecutor(6) as pool:
        for choice in pool.map(ask, range(6)):
            assert choice.finish_reason == "tool_calls"
            (call,) = choice.message.tool_calls
            assert call.id.startswith("call_") and call.function.name in PARAMS
            jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def test_named_tool_and_streamed_tool_deltas(client, model):
    kwargs = dict(
        model=model, tools=TOOLS, temperature=0, max_tokens=64,
        tool_choice={"type": "function", "function": {"name": "add"}},
        messages=[{"role": "user", "content": "What is 2 + 3?"}],
    )  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0]
    assert whole.finish_reason == "tool_calls"
    (call,) = whole.message.tool_calls
    assert call.function.name == "add"
    jsonschema.validate(json.loads(call.function.arguments), PARAMS["add"])
    name, args, reason = "", "", None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            reason = choice.finish_reason or reason
            for d in choice.delta.tool_calls or []:
                name += d.function.name or ""
                args += d.function.arguments or ""
    assert (name, args, reason) == ("add", call.function.arguments, "tool_calls")


def test_tool_result_conversation(client, model):
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 degrees and rain"},
    ]  # fmt: skip
    r = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, max_tokens=24, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls


def test_streaming_equals_non_streaming_at_temperature_zero(client, model):
    rf = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}}
    kwargs = dict(
        model=model, messages=[{"role": "user", "content": "Order some fruit as JSON."}],
        response_format=rf, temperature=0, max_tokens=64,
    )  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in client.chat.completions.create(stream=True, **kwargs)
        if ch.choices
    )
    assert streamed == whole
    jsonschema.validate(json.loads(whole), ORDER)


def test_auto_tool_choice_streams_like_non_streaming(client, model):
    """tool_choice auto (hermes parser): the same content and calls streamed or not."""
    kwargs = dict(
        model=model, tools=TOOLS, temperature=0, max_tokens=48,
        messages=[{"role": "user", "content": "Hello! Who are you?"}],
    )  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0]
    content, calls, reason = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            reason = choice.finish_reason or reason
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                acc = calls.setdefault(d.index, ["", ""])
                acc[0] += d.function.name or ""
                acc[1] += d.function.arguments or ""
    assert content == (whole.message.content or "")
    assert list(calls.values()) == [
        [c.function.name, c.function.arguments] for c in whole.message.tool_calls or []
    ]
    assert reason == whole.finish_reason
