"""docs/api-parameters.md cannot drift from the request schemas or from the server.

Every field of each route's request model (nested models flattened as `a.b` / `a[].b`) has
exactly one row, with the status the schema gives it (required, supported, or rejected for
the fields typed `Unsupported`); no row names a field the schema lacks; and a real server
answers each row's example with 200 (required and supported) or with the route's rejection
status and a message naming the parameter (rejected).
"""

from __future__ import annotations

import copy
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from gateway_testenv import MODEL_NAME
from pydantic import BaseModel

from leaflm.gateway.schemas.openai import ChatCompletionRequest, CompletionRequest
from leaflm.gateway.schemas.ops import DetokenizeRequest, TokenizeRequest
from leaflm.gateway.schemas.tgi import GenerateRequest

PAGE = Path(__file__).resolve().parents[3] / "docs" / "api-parameters.md"
CHAT_MSG = [{"role": "user", "content": "hello"}]

# section heading -> (request model, route the examples are sent to, base body, rejection code)
SECTIONS: dict[str, tuple[type[BaseModel], str, dict[str, Any], int]] = {
    "`POST /v1/completions`": (
        CompletionRequest, "/v1/completions",
        {"model": MODEL_NAME, "prompt": "a leaf", "max_tokens": 2}, 400,
    ),
    "`POST /v1/chat/completions`": (
        ChatCompletionRequest, "/v1/chat/completions",
        {"model": MODEL_NAME, "messages": CHAT_MSG, "max_tokens": 2}, 400,
    ),
    "`POST /generate`, `POST /generate_stream`, `POST /` (TGI)": (
        GenerateRequest, "/", {"inputs": "a leaf", "parameters": {"max_new_tokens": 2}}, 422,
    ),
    "`POST /tokenize`": (TokenizeRequest, "/tokenize", {"model": MODEL_NAME, "prompt": "a"}, 400),
    "`POST /detokenize`": (DetokenizeRequest, "/detokenize", {"tokens": [5, 6]}, 400),
}  # fmt: skip
# Examples that only make sense with another field set (the page's notes say so).
COMPANIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/chat/completions", "top_logprobs"): {"logprobs": True},
    ("/", "parameters.best_of"): {"parameters.do_sample": True},
    # Rendered tools do not fit the tiny test model's 256-token context: examples send none.
    ("/v1/chat/completions", "tools"): {"tool_choice": "none"},
    ("/v1/chat/completions", "tool_choice"): {
        "tools": [{"type": "function", "function": {"name": "f"}}]
    },
}
ROW = re.compile(r"^\| `([^`]+)` \| (required|supported|rejected) \| `(.+?)` \|")


def _rows() -> dict[str, list[tuple[str, str, Any]]]:
    """heading -> [(parameter, status, example)] in page order."""
    sections: dict[str, list[tuple[str, str, Any]]] = {}
    current: list[tuple[str, str, Any]] | None = None
    for line in PAGE.read_text().splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        elif line.startswith("| `") and current is not None:
            m = ROW.match(line)
            assert m, f"row not in the form | `name` | status | `json example` | notes |: {line}"
            current.append((m.group(1), m.group(2), json.loads(m.group(3))))
    return sections


def _nested_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """(model, is_list) when a field holds exactly one nested model (maybe optional or a list)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _nested_model(args[0]) if len(args) == 1 else None
    if typing.get_origin(annotation) is typing.Annotated:
        return _nested_model(args[0])
    if typing.get_origin(annotation) is list:
        inner = _nested_model(args[0])
        return (inner[0], True) if inner and not inner[1] else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None


def _rejected(field: Any) -> bool:
    """Typed `Unsupported` (None only), or TGI's `watermark: Literal[False]`."""
    ann = field.annotation
    return ann is type(None) or (typing.get_origin(ann) is Literal and ann.__args__ == (False,))


def schema_fields(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Flattened field name -> the status the schema gives it."""
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            sub, is_list = nested
            out.update(schema_fields(sub, f"{prefix}{name}{'[]' if is_list else ''}."))
            if is_list:  # a list of objects (messages) is a parameter itself, too
                out[prefix + name] = "required" if field.is_required() else "supported"
            continue
        if _rejected(field):
            out[prefix + name] = "rejected"
        else:
            out[prefix + name] = "required" if field.is_required() else "supported"
    return out


def test_page_has_one_row_per_schema_field_with_its_status():
    sections = _rows()
    assert list(sections) == list(SECTIONS), "sections differ from the routes this test knows"
    for heading, (model, *_rest) in SECTIONS.items():
        rows = sections[heading]
        names = [name for name, _, _ in rows]
        assert len(names) == len(set(names)), f"{heading}: a parameter is listed twice"
        documented = {name: status for name, status, _ in rows}
        expected = schema_fields(model)
        missing = sorted(set(expected) - set(documented))
        stale = sorted(set(documented) - set(expected))
        assert not missing, f"{heading}: fields of {model.__name__} not on the page: {missing}"
        assert not stale, f"{heading}: rows for fields {model.__name__} does not have: {stale}"
        wrong = {n: (documented[n], s) for n, s in expected.items() if documented[n] != s}
        assert not wrong, f"{heading}: (page, schema) status differs: {wrong}"


def _with(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    if "[]." in path:  # a field of each list element: set it on the base body's first element
        head, leaf = path.split("[].")
        if head not in out:
            out[head] = copy.deepcopy(CHAT_MSG)
            out.pop("prompt", None)
        out[head][0][leaf] = value
        return out
    if path == "messages":
        out.pop("prompt", None)
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return out


CASES = [
    pytest.param(heading, name, status, example, id=f"{SECTIONS[heading][1]} {name}")
    for heading, rows in _rows().items()
    if heading in SECTIONS
    for name, status, example in rows
]


@pytest.mark.parametrize(("heading", "name", "status", "example"), CASES)
def test_each_example_gets_the_documented_answer(server, auth, heading, name, status, example):
    _model, route, base, rejection = SECTIONS[heading]
    body = _with(base, name, example)
    for other, value in COMPANIONS.get((route, name), {}).items():
        body = _with(body, other, value)
    with httpx.Client(base_url=server.url, headers=auth, timeout=120) as client:
        r = client.post(route, json=body)
    leaf = name.rsplit(".", 1)[-1]
    if status == "rejected":
        assert r.status_code == rejection, (body, r.status_code, r.text)
        assert leaf in r.text and "not supported" in r.text, r.text
    else:
        assert r.status_code == 200, (body, r.status_code, r.text)
