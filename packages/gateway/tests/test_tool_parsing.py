"""Tool-call parsing and rendering, as pure functions: Hermes `<tool_call>` blocks and plain
JSON answers become OpenAI tool calls only when they are well-formed calls of declared
functions; everything else stays text."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from leaflm.gateway.errors import APIError
from leaflm.gateway.tools import (
    ToolStream,
    parse_output,
    plan_tools,
    stream_deltas,
    template_messages,
)

TOOLS = [
    {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "echo"}},
]


def plan(choice=None, parser="hermes", parallel=None):
    body = SimpleNamespace(
        tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel,
        response_format=None, structured_outputs=None, guided_json=None, guided_regex=None,
        guided_choice=None, guided_grammar=None, use_beam_search=False,
    )  # fmt: skip
    return plan_tools(body, parser)


def names_args(calls):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_hermes_blocks_become_calls_and_the_rest_content():
    text = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n' \
           '<tool_call>{"name": "echo", "arguments": {}}</tool_call>'  # fmt: skip
    content, calls = parse_output(text, plan())
    assert content == "Let me add.\n"  # the text before the first call, as vLLM
    assert names_args(calls) == [("add", {"a": 1}), ("echo", {})]
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    _, one = parse_output(text, plan(parallel=False))
    assert names_args(one) == [("add", {"a": 1})]
    unclosed = '<tool_call>{"name": "add", "arguments": {"a": 2}}'  # stopped before the tag
    assert names_args(parse_output(unclosed, plan())[1]) == [("add", {"a": 2})]


@pytest.mark.parametrize(
    "text",
    ["just words", '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
     '<tool_call>{"name": "add", "arguments": [1]}</tool_call>', "<tool_call>{not json</tool_call>"],
)  # fmt: skip
def test_malformed_or_undeclared_calls_stay_text(text):
    assert parse_output(text, plan()) == (text, None)


def test_json_parser_and_required_and_named():
    content, calls = parse_output(' {"name": "add", "arguments": {"a": 1}} ', plan(parser="json"))
    assert content is None and names_args(calls) == [("add", {"a": 1})]
    content, calls = parse_output('[{"name": "echo", "parameters": {"x": 1}}]', plan("required"))
    assert names_args(calls) == [("echo", {"x": 1})]
    named = plan({"type": "function", "function": {"name": "add"}})
    assert names_args(parse_output('{"a": 3}', named)[1]) == [("add", {"a": 3})]
    assert parse_output("<tool_call>x</tool_call>", plan("none")) == (
        "<tool_call>x</tool_call>",
        None,
    )


def test_required_schema_lists_declared_functions():
    schema = plan("required", parallel=False).schema()
    assert schema["maxItems"] == 1 and schema["minItems"] == 1
    assert [o["properties"]["name"]["enum"] for o in schema["items"]["anyOf"]] == [
        ["add"],
        ["echo"],
    ]
    assert plan().schema() is None


def test_tool_stream_sends_text_until_a_call_starts():
    ts = ToolStream(plan())
    pieces = [
        "Sure",
        "Sure, <to",
        "Sure, <tool_ca",
        'Sure, <tool_call>{"name": "add", "arguments": {}}</tool_call>',
    ]
    sent = [ts.feed(p) for p in pieces]
    assert sent == ["Sure", ", ", "", ""]  # a possible start of the tag is held back
    chunks = ts.finish(pieces[-1], "stop")
    assert [c["finish_reason"] for c in chunks] == [None, None, "tool_calls"]
    assert chunks[0]["delta"]["tool_calls"][0]["function"]["name"] == "add"
    plain = ToolStream(plan())
    assert plain.feed("a <b") == "a <b" and plain.feed("a <bc <") == "c "
    (last,) = [c for c in plain.finish("a <bc <", "stop") if c["delta"]]
    assert (
        last["delta"] == {"content": "<"}
        and plain.finish("a <bc <", "stop")[-1]["finish_reason"] == "stop"
    )
    held = ToolStream(plan("required"))
    assert held.feed('[{"name": "add"') == ""


def test_stream_deltas_shape():
    calls = [{"id": "call_a", "type": "function", "function": {"name": "add", "arguments": "{}"}}]
    first, second = stream_deltas(calls)
    assert first["tool_calls"][0] == {"index": 0, "id": "call_a", "type": "function",
                                      "function": {"name": "add", "arguments": ""}}  # fmt: skip
    assert second["tool_calls"][0] == {"index": 0, "function": {"arguments": "{}"}}


def test_hermes_rendering_for_templates_without_tools():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "2"},
    ]  # fmt: skip
    out, tools = template_messages(msgs, plan(), native=False)
    assert tools is None
    assert (
        out[0]["content"].startswith("Be brief.\n\n# Tools")
        and '"name": "add"' in out[0]["content"]
    )
    assert out[1]["content"] == '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'
    assert out[2] == {"role": "user", "content": "<tool_response>\n2\n</tool_response>"}
    native, tools = template_messages(msgs, plan(), native=True)
    assert tools == TOOLS and native[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


def test_plan_errors_name_the_field():
    with pytest.raises(APIError) as err:
        plan({"type": "function", "function": {"name": "missing"}})
    assert err.value.param == "tool_choice"
