"""schemathesis over /openapi.json against the real server: every documented route, a few
hundred generated requests (valid and invalid), all of schemathesis's checks, including that
each response matches the schema documented for its status code."""

from __future__ import annotations

import copy

import httpx
import pytest
import schemathesis
from gateway_testenv import API_KEY
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "max_new_tokens", "n", "best_of",
                 "top_n_tokens", "logprobs", "top_logprobs", "prompt_logprobs")  # fmt: skip
MAX_GENERATED = 4
EXAMPLES = 12  # per route and mode: ~17 operations x 2 modes x 12 = ~400 requests


_MODE = [GenerationMode.POSITIVE]  # the mode being generated, read by the hook


def _is_int(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _clamp(target: dict) -> None:
    """Generation lengths and prompt sizes within the tiny model's 256-token context."""
    for name in LENGTH_FIELDS:
        if _is_int(target.get(name)) and target[name] > 1:
            target[name] = min(target[name], MAX_GENERATED)
    if _is_int(target.get("min_tokens")):
        target["min_tokens"] = min(target["min_tokens"], 1)
    for name in ("prompt", "inputs"):
        value = target.get(name)
        if isinstance(value, str):
            target[name] = value[:32]
        elif isinstance(value, list):
            target[name] = [v[:32] if isinstance(v, (str, list)) else v for v in value[:4]]
            target[name] = [v % 300 if _is_int(v) else v for v in target[name]]
            target[name] = [[t % 300 if _is_int(t) else t for t in v] if isinstance(v, list)
                            else v for v in target[name]]  # fmt: skip
    if isinstance(target.get("messages"), list):
        target["messages"] = target["messages"][:2]
        for message in target["messages"]:
            if not isinstance(message, dict):
                continue
            for field in ("role", "name"):  # the chat template renders these too
                if isinstance(message.get(field), str):
                    message[field] = message[field][:16]
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = content[:16]
            elif isinstance(content, list):
                message["content"] = content[:2]
                for part in message["content"]:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        part["text"] = part["text"][:16]
    if isinstance(target.get("tokens"), list):  # /detokenize: ids within the tiny vocabulary
        target["tokens"] = [t % 300 if _is_int(t) else t for t in target["tokens"]]


def _cross_field(body: dict, path: str) -> None:
    """Rules between fields that a JSON schema cannot state, so positive cases obey them."""
    if body.get("top_logprobs") and body.get("logprobs") is not True:
        body["logprobs"] = True
    n = body.get("n", 1)
    best_of = body.get("best_of")
    if _is_int(best_of) and _is_int(n) and (best_of < n or body.get("stream")):
        body["best_of"] = None
    if body.get("max_tokens") == 0 and body.get("stream"):
        body["max_tokens"] = 1
    params = body.get("parameters")
    if isinstance(params, dict) and (params.get("best_of") or 1) > 1:
        # TGI: best_of needs sampling, no seed, no streaming
        params["do_sample"], params["seed"] = True, None
        body["stream"] = False
        if path == "/generate_stream":
            params["best_of"] = None
    if "prompt" in body and "messages" in body and "tokens" not in body:  # /tokenize: one
        body.pop("messages")
    # Grammars (regexes, EBNF, JSON schemas, tool definitions) must compile, and beam search
    # excludes logprobs and stop strings: no JSON schema says so; positive cases leave them out.
    for name in (
        "response_format",
        "structured_outputs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "tools",
        "tool_choice",
        "use_beam_search",
    ):
        body.pop(name, None)
    if isinstance(params, dict):
        params.pop("grammar", None)
    if isinstance(body.get("logit_bias"), dict):  # token ids within the tiny vocabulary
        bias = body["logit_bias"].items()  # (keys: token ids, which generators may not honour)
        body["logit_bias"] = {str(int(k) % 300): v for k, v in bias if k.isascii() and k.isdigit()}
    if isinstance(body.get("allowed_token_ids"), list):
        body["allowed_token_ids"] = [
            t % 300 if _is_int(t) else t for t in body["allowed_token_ids"]
        ]


@schemathesis.hook
def map_body(context, body):
    """Keep generations short: the run is about the contract, not about model compute.

    Only valid (positive) cases are touched: an invalid case must stay invalid, and the
    server refuses it before any generation anyway."""
    if not isinstance(body, dict) or _MODE[0] is not GenerationMode.POSITIVE:
        return body
    body = copy.deepcopy(body)
    _clamp(body)
    if isinstance(body.get("parameters"), dict):
        _clamp(body["parameters"])
    _cross_field(body, context.operation.path if context.operation is not None else "")
    return body


def _operations(server):
    doc = httpx.get(server.url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_contract(server, mode):
    _MODE[0] = mode
    operations = _operations(server)
    assert len(operations) >= 14
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)  # fmt: skip
        def check(case) -> None:
            case.call_and_validate(base_url=server.url, headers=headers, timeout=60)

        try:
            check()
        except Unsatisfiable:  # nothing to make invalid (GET routes without parameters)
            assert mode is GenerationMode.NEGATIVE
