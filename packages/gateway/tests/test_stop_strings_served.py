"""Stop strings through every surface, streamed and not: the text is exact when the stop
string is longer than the text so far (the old hold-back sliced from the wrong end), when
it spans tokens, and when it holds multi-byte characters."""

from __future__ import annotations

import json

import httpx
import pytest
from gateway_testenv import API_KEY

PROMPT = "The capital of France is"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
MAX = 12


def _completion(server, stop, stream: bool) -> str:
    body = {"prompt": PROMPT, "max_tokens": MAX, "temperature": 0, "ignore_eos": True,
            "stop": stop, "stream": stream}  # fmt: skip
    return _run(server, "/v1/completions", body, stream, lambda c: c["text"])


def _chat(server, stop, stream: bool) -> str:
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX,
            "temperature": 0, "ignore_eos": True, "stop": stop, "stream": stream}  # fmt: skip
    pick = (
        (lambda c: c["delta"].get("content") or "")
        if stream
        else (lambda c: c["message"]["content"])
    )
    return _run(server, "/v1/chat/completions", body, stream, pick)


def _run(server, path, body, stream, pick) -> str:
    if not stream:
        r = httpx.post(server.url + path, json=body, headers=HEADERS, timeout=60)
        assert r.status_code == 200, r.text
        return pick(r.json()["choices"][0])
    text = ""
    with httpx.stream("POST", server.url + path, json=body, headers=HEADERS, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text += pick(choice)
    return text


def _tgi(server, stop, stream: bool) -> str:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX, "stop": stop or None}}
    if not stream:
        r = httpx.post(server.url + "/generate", json=body, headers=HEADERS, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["generated_text"]
    text, final = "", None
    with httpx.stream("POST", server.url + "/generate_stream", json=body, headers=HEADERS,
                      timeout=60) as r:  # fmt: skip
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                text += event["token"]["text"] if not event["token"]["special"] else ""
                final = event["generated_text"] or final
    assert final == text
    return text


SURFACES = {"completions": _completion, "chat": _chat, "tgi": _tgi}


@pytest.fixture(scope="module")
def references(server) -> dict[str, str]:
    return {name: fn(server, [], False) for name, fn in SURFACES.items()}


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "never",
    ["abcdefghij" * 20, "東京🙂" * 30, "\u00e9" * 100],
    ids=["ascii", "multibyte", "e-acute"],
)
def test_long_unmatched_stop_string_leaves_text_exact(server, references, surface, stream, never):
    reference = references[surface]
    assert len(reference) > 3
    assert SURFACES[surface](server, [never], stream) == reference


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_spanning_tokens_cuts_exactly(server, references, surface, stream):
    reference = references[surface]
    tokens = httpx.post(server.url + "/tokenize", json={"prompt": reference,
                        "add_special_tokens": False}, headers=HEADERS).json()["tokens"]  # fmt: skip
    assert len(tokens) >= 3
    tok_text = httpx.post(server.url + "/detokenize", json={"tokens": tokens[:2]},
                          headers=HEADERS).json()["prompt"]  # fmt: skip
    boundary = len(tok_text)
    stop = reference[max(0, boundary - 1) : boundary + 2]  # straddles tokens 2 and 3
    cut = reference.find(stop)
    assert SURFACES[surface](server, ["x" * 50, stop], stream) == reference[:cut]


def test_include_stop_str_in_output(server, references):
    reference = references["completions"]
    stop = reference[2:5]
    body = {"prompt": PROMPT, "max_tokens": MAX, "temperature": 0, "ignore_eos": True,
            "stop": [stop], "include_stop_str_in_output": True}  # fmt: skip
    r = httpx.post(server.url + "/v1/completions", json=body, headers=HEADERS)
    assert r.json()["choices"][0]["text"] == reference[: reference.find(stop) + len(stop)]
