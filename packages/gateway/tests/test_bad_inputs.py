"""Bad requests get the right 4xx in OpenAI's error shape, with a message naming the problem,
and the server stays healthy afterwards."""

from __future__ import annotations

import httpx
import pytest
from gateway_testenv import MODEL_NAME

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


def _cmpl(**kw):
    return {"model": MODEL_NAME, "prompt": "a leaf", "max_tokens": 4, **kw}


def _chat(**kw):
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], **kw}


CASES = [
    # (path, body, status, words the message must contain, param)
    (COMPLETIONS, _cmpl(max_tokens="many"), 400, ["max_tokens", "integer"], "max_tokens"),
    (COMPLETIONS, _cmpl(max_tokens=-3), 400, ["max_tokens", "-3"], "max_tokens"),
    (COMPLETIONS, _cmpl(max_tokens=10**9), 400, ["maximum context length", "256"], "max_tokens"),
    (COMPLETIONS, _cmpl(temperature=-0.5), 400, ["temperature", ">= 0"], "temperature"),
    (COMPLETIONS, _cmpl(temperature="hot"), 400, ["temperature"], "temperature"),
    (COMPLETIONS, _cmpl(top_p=0), 400, ["top_p"], "top_p"),
    (COMPLETIONS, _cmpl(n=0), 400, ["n must be >= 1"], "n"),
    (COMPLETIONS, _cmpl(logprobs=99), 400, ["logprobs"], "logprobs"),
    (COMPLETIONS, _cmpl(model="gpt-9"), 404, ["gpt-9", "does not exist"], "model"),
    (COMPLETIONS, _cmpl(prompt=""), 400, ["prompt", "empty"], "prompt"),
    (COMPLETIONS, _cmpl(prompt="leaf " * 400), 400, ["maximum context length", "256"], "prompt"),
    (COMPLETIONS, _cmpl(prompt=[1, 2, 10**6]), 400, ["vocabulary"], "prompt"),
    (COMPLETIONS, {"model": MODEL_NAME}, 400, ["prompt", "required"], "prompt"),
    (CHAT, _chat(messages=[]), 400, ["messages", "empty"], "messages"),
    (CHAT, _chat(messages="hello"), 400, ["messages"], "messages"),
    (CHAT, _chat(max_completion_tokens=0), 400, ["max_completion_tokens"], "max_completion_tokens"),
    (CHAT, _chat(top_logprobs=2), 400, ["top_logprobs", "logprobs"], "top_logprobs"),
    (CHAT, _chat(presence_penalty=5), 400, ["presence_penalty"], "presence_penalty"),
]


@pytest.mark.parametrize(("path", "body", "status", "words", "param"), CASES)
def test_bad_request_is_4xx_naming_the_problem(server, auth, path, body, status, words, param):
    r = httpx.post(server.url + path, json=body, headers=auth)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for word in words:
        assert word in err["message"], err["message"]
    assert err["param"] == param


@pytest.mark.parametrize("payload", [b'{"prompt": "a leaf", ', b"not json", b"[1, 2]", b""])
def test_malformed_json_is_400(server, auth, payload):
    headers = {**auth, "Content-Type": "application/json"}
    r = httpx.post(server.url + COMPLETIONS, content=payload, headers=headers)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "JSON" in message or "body" in message, message


@pytest.mark.parametrize(
    ("headers", "words"),
    [({}, "Missing API key"), ({"Authorization": "Bearer wrong"}, "Incorrect API key")],
)
def test_api_key_required(server, headers, words):
    for path in (COMPLETIONS, "/generate"):
        r = httpx.post(server.url + path, json=_cmpl(), headers=headers)
        assert r.status_code == 401
        body = r.json()
        message = body["error"]["message"] if path == COMPLETIONS else body["error"]
        assert words in message
    assert httpx.get(server.url + "/v1/models", headers=headers).status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # health needs no key


def test_openai_sdk_raises_typed_errors(openai_client):
    import openai

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        openai_client.completions.create(model="nope", prompt="a", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        openai_client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], temperature=-1
        )


def test_unknown_route_and_method_use_the_error_shape(server, auth):
    r = httpx.get(server.url + "/v1/nothing", headers=auth)
    assert r.status_code == 404 and "/v1/nothing" in r.json()["error"]["message"]
    r = httpx.get(server.url + COMPLETIONS, headers=auth)
    assert r.status_code == 405 and "error" in r.json()


def test_server_healthy_after_bad_inputs(server, auth):
    for _, body, *_ in CASES[:5]:
        httpx.post(server.url + COMPLETIONS, json=body, headers=auth)
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    r = httpx.post(server.url + COMPLETIONS, json=_cmpl(temperature=0), headers=auth)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
