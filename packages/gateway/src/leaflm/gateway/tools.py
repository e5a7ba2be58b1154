"""Tool calling on /v1/chat/completions: render tools, constrain or parse calls, shape output.

- `tools` are rendered by the model's chat template (`tools=` of `apply_chat_template`).
  A template that ignores tools (SmolLM2's, for one) gets them as a Hermes-style system
  block instead, and earlier assistant `tool_calls` / `role: "tool"` results as Hermes
  `<tool_call>` / `<tool_response>` text, so the model still sees them.
- `tool_choice`: "none" renders no tools and parses nothing; "auto" (the default with
  tools) lets the model write and parses its output with the server's `--tool-call-parser`
  (`hermes`: `<tool_call>{"name", "arguments"}</tool_call>` blocks; `json`: the whole output
  is one such object or a list of them); "required" constrains the output with a JSON-schema
  grammar to a list of calls of the declared functions (one call when
  `parallel_tool_calls` is false); a named function constrains it to that function's
  arguments, as vLLM does.
- Calls come back as `message.tool_calls` (ids `call_<hex>`, `arguments` a JSON string) with
  `finish_reason: "tool_calls"`; streamed, as OpenAI's tool-call deltas once the choice ends.
  With `auto` and the hermes parser, text before a `<tool_call>` streams as content as it
  comes; otherwise (required, named, the json parser) the answer is held until it ends.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from leaflm.gateway.errors import bad_request

PARSERS = ("hermes", "json")

_HERMES_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
HERMES_START = "<tool_call>"
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass
class ToolPlan:
    """What a request asked of tools, validated."""

    tools: list[dict[str, Any]]  # OpenAI's {"type": "function", "function": {...}} entries
    choice: str  # "none" | "auto" | "required" | "function"
    name: str | None  # the named function
    parallel: bool
    parser: str

    @property
    def functions(self) -> dict[str, dict[str, Any]]:
        return {t["function"]["name"]: t["function"] for t in self.tools}

    def parameters(self, name: str) -> dict[str, Any]:
        return self.functions[name].get("parameters") or {"type": "object"}

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema that constrains the output, for required and named choices."""
        if self.choice == "function" and self.name is not None:
            return self.parameters(self.name)
        if self.choice != "required":
            return None
        calls = [
            {
                "type": "object",
                "properties": {"name": {"enum": [n]}, "parameters": self.parameters(n)},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for n in self.functions
        ]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        if not self.parallel:
            schema["maxItems"] = 1
        return schema


def plan_tools(body: Any, parser: str) -> ToolPlan | None:
    """Validate `tools` / `tool_choice` (400s name the field); None when tools are not used."""
    tools, choice = body.tools, body.tool_choice
    if tools is None:
        if choice not in (None, "none"):
            raise bad_request("tool_choice requires tools", param="tool_choice")
        return None
    if not tools:
        raise bad_request("tools must not be empty (leave it out instead)", param="tools")
    names = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if t.get("type") != "function" or not isinstance(fn, dict):
            raise bad_request(
                f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", "tools"
            )
        if not isinstance(fn.get("name"), str) or not re.fullmatch(
            r"[A-Za-z0-9_\-.]{1,64}", fn["name"]
        ):
            raise bad_request(f"tools[{i}].function.name must be 1-64 of [A-Za-z0-9_-.]", "tools")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise bad_request(f"tools[{i}].function.parameters must be a JSON schema", "tools")
        names.append(fn["name"])
    if len(set(names)) != len(names):
        raise bad_request("tools must have distinct function names", param="tools")
    name = None
    if choice is None:
        kind = "auto"
    elif isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise bad_request(
                f"tool_choice must be 'none', 'auto', 'required' or a named function, got {choice!r}",
                "tool_choice",
            )
        kind = choice
    else:
        fn = choice.get("function") if choice.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in names:
            raise bad_request(f"tool_choice names no declared function: {name!r}", "tool_choice")
        kind = "function"
    parallel = body.parallel_tool_calls is not False
    plan = ToolPlan(list(tools), kind, name, parallel, parser)
    if plan.schema() is not None:
        from leaflm.gateway.structured import openai_structured

        if openai_structured(body) is not None:
            raise bad_request(
                "tool_choice 'required' or a named function cannot be combined with another "
                "structured output",
                param="tool_choice",
            )
        if body.use_beam_search:
            raise bad_request("tool_choice cannot be combined with use_beam_search", "tool_choice")
    return plan


def check_tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    """An assistant message's earlier `tool_calls`, checked (400 naming the message)."""
    if not isinstance(calls, list) or not all(
        isinstance(c, dict)
        and isinstance(c.get("function"), dict)
        and isinstance(c["function"].get("name"), str)
        for c in calls
    ):
        raise bad_request(
            f"messages[{i}].tool_calls must be a list of {{'id', 'type', 'function': "
            "{'name', 'arguments'}}",
            param="messages",
        )
    return calls


def constrain(params: Any, plan: ToolPlan | None) -> Any:
    """The request's SamplingParams with the tool grammar of a required / named choice."""
    schema = plan.schema() if plan is not None else None
    if schema is None:
        return params
    import dataclasses

    from leaflm.engine import StructuredOutputsParams

    try:
        spec = StructuredOutputsParams(json=schema)
    except ValueError as exc:
        raise bad_request(f"tools: {exc}", param="tools") from exc
    return dataclasses.replace(params, structured_outputs=spec)


def message_and_reason(
    text: str, reason: str | None, plan: ToolPlan | None
) -> tuple[dict[str, Any], str | None]:
    """The assistant message of a finished choice and its finish_reason."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if plan is None or plan.choice == "none" or reason is None:
        return message, reason
    content, calls = parse_output(text, plan)
    if not calls:
        return message, reason
    message["content"], message["tool_calls"] = content, calls
    return message, "tool_calls"


# -- rendering --------------------------------------------------------------------------
def template_supports_tools(tokenizer: Any) -> bool:
    return "tools" in str(getattr(tokenizer, "chat_template", "") or "")


def _arguments_dict(call: dict[str, Any]) -> dict[str, Any]:
    args = (call.get("function") or {}).get("arguments")
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            raise bad_request(
                "an assistant tool call's arguments are not valid JSON", "messages"
            ) from None
    return args or {}


def template_messages(
    messages: list[dict[str, Any]], plan: ToolPlan | None, native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) for apply_chat_template; Hermes text where the template has no tools."""
    tools = plan.tools if plan is not None and plan.choice != "none" else None
    if native:
        out = []
        for m in messages:
            m = dict(m)
            if m.get("tool_calls"):
                m["tool_calls"] = [
                    {**c, "function": {**c["function"], "arguments": _arguments_dict(c)}}
                    for c in m["tool_calls"]
                ]
            out.append(m)
        return out, tools
    out = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = [
                "<tool_call>\n"
                + json.dumps({"name": c["function"]["name"], "arguments": _arguments_dict(c)})
                + "\n</tool_call>"
                for c in m["tool_calls"]
            ]
            content = "\n".join(([content] if content else []) + calls)
        elif role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        entry = {"role": role, "content": content}
        if "name" in m:
            entry["name"] = m["name"]
        out.append(entry)
    if tools:
        block = _HERMES_SYSTEM.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out, None


# -- parsing ----------------------------------------------------------------------------
def _call(name: str, arguments: Any) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": args}}  # fmt: skip


def _as_calls(obj: Any, plan: ToolPlan, args_key: tuple[str, ...]) -> list[dict[str, Any]] | None:
    items = obj if isinstance(obj, list) else [obj]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in plan.functions:
            return None
        args: Any = next((item[k] for k in args_key if k in item), {})
        if not isinstance(args, dict):
            return None
        calls.append(_call(item["name"], args))
    return calls or None


def parse_output(text: str, plan: ToolPlan) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(content, tool_calls) of a finished answer."""
    if plan.choice == "none":
        return text, None
    if plan.choice == "function" and plan.name is not None:
        return None, [_call(plan.name, text.strip())]
    if plan.choice == "required":
        try:
            calls = _as_calls(json.loads(text), plan, ("parameters", "arguments"))
        except ValueError:
            calls = None
        return (None, calls) if calls else (text, None)
    if plan.parser == "json":
        try:
            calls = _as_calls(json.loads(text.strip()), plan, ("arguments", "parameters"))
        except ValueError:
            calls = None
        if calls and not plan.parallel:
            calls = calls[:1]
        return (None, calls) if calls else (text, None)
    calls = []
    for block in _HERMES_CALL.findall(text):
        try:
            parsed = _as_calls(json.loads(block), plan, ("arguments", "parameters"))
        except ValueError:
            parsed = None
        if parsed is None:
            return text, None  # not a well-formed call: the model's words stand as text
        calls += parsed
    if not calls:
        return text, None
    content = text[: text.find(HERMES_START)]  # as vLLM's hermes parser: the text before
    return content or None, calls if plan.parallel else calls[:1]


class ToolStream:
    """Streams one choice of a tool request: content as it comes while it cannot be a call
    (tool_choice auto with the hermes parser: until `<tool_call>` starts; a possible start
    of the tag is held back), the rest parsed when the choice ends."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.live = plan.choice == "auto" and plan.parser == "hermes"
        self.sent = 0  # characters of content already streamed

    def feed(self, text: str) -> str:
        """The content delta that is safe to send, given the choice's text so far."""
        if not self.live:
            return ""
        start = text.find(HERMES_START)
        if start >= 0:
            safe = start
            self.live = False
        else:
            safe = len(text)
            for k in range(min(len(HERMES_START) - 1, len(text)), 0, -1):
                if HERMES_START.startswith(text[-k:]):
                    safe = len(text) - k
                    break
        delta, self.sent = text[self.sent : safe], max(self.sent, safe)
        return delta

    def finish(self, text: str, reason: str | None) -> list[dict[str, Any]]:
        """The choice's last chunks: remaining content, tool-call deltas, the finish."""
        message, reason = message_and_reason(text, reason, self.plan)
        chunks: list[dict[str, Any]] = []
        rest = (message.get("content") or "")[self.sent :]
        if rest:
            chunks.append({"delta": {"content": rest}, "finish_reason": None})
        for delta in stream_deltas(message.get("tool_calls") or []):
            chunks.append({"delta": delta, "finish_reason": None})
        chunks.append({"delta": {}, "finish_reason": reason})
        return chunks


def stream_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's streamed form: per call, a delta with id + name, then one with the arguments."""
    deltas = []
    for i, c in enumerate(calls):
        fn = c["function"]
        deltas.append({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                       "function": {"name": fn["name"], "arguments": ""}}]})  # fmt: skip
        deltas.append({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]})
    return deltas
