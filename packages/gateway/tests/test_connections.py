"""Connection-level behaviour: bounded shutdown, slow-header timeout, 401 challenge, CORS,
HEAD /health, and n > 1 streams sent one choice per chunk (reassembled by the openai SDK)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from gateway_testenv import API_KEY, MODEL_NAME

from leaflm.gateway.server import ServerThread
from leaflm.gateway.settings import GatewaySettings


def test_shutdown_aborts_in_flight_streams_within_the_timeout(engine):
    from gateway_fake_engine import FakeEngine

    fake = FakeEngine(engine.get_tokenizer(), delay_s=0.1)  # 100 tokens take 10 s
    server = ServerThread(fake, GatewaySettings(shutdown_timeout_s=1.0)).start()
    body = {"prompt": "a b c", "max_tokens": 100, "stream": True}
    lines: list[str] = []
    connected = threading.Event()

    def client() -> None:
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                connected.set()
                lines.append(line)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        assert connected.wait(30)
        start = time.monotonic()
        server.stop(timeout_s=30)
        elapsed = time.monotonic() - start
    finally:
        thread.join(30)
    assert elapsed < 6.0  # 1 s drain + abort, far less than the 10 s stream
    events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert "shutting down" in events[-2] and '"error"' in events[-2]
    assert fake.running == 0 and len(set(fake.aborted)) == 1


def test_connection_without_a_request_head_is_closed(engine):
    with ServerThread(engine, GatewaySettings(timeout_request_header_s=0.5)) as server:
        for payload in (b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"):  # idle, slow
            sock = socket.create_connection((server.host, server.port))
            sock.settimeout(5)
            sock.sendall(payload)
            start = time.monotonic()
            assert sock.recv(1024) == b""  # closed by the server
            assert time.monotonic() - start < 3.0
            sock.close()
        assert httpx.get(server.url + "/health").status_code == 200


def test_401_carries_www_authenticate(server):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_head_health(server):
    r = httpx.head(server.url + "/health")
    assert r.status_code == 200


def test_cors_only_when_configured(engine, server):
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    r = httpx.options(server.url + "/v1/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    settings = GatewaySettings(api_key=API_KEY, allowed_origins=["https://ui.example"])
    with ServerThread(engine, settings) as srv:
        r = httpx.options(srv.url + "/v1/completions", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = httpx.get(srv.url + "/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_n_streams_one_choice_per_chunk(server, openai_client):
    body = {"model": MODEL_NAME, "prompt": "one two", "max_tokens": 4, "n": 5, "stream": True,
            "temperature": 0.9, "seed": 3, "ignore_eos": True}  # fmt: skip
    headers = {"Authorization": f"Bearer {API_KEY}"}
    chunks = []
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=headers) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    assert chunks and all(len(c["choices"]) == 1 for c in chunks)
    streamed: dict[int, str] = {}
    for c in chunks:
        streamed[c["choices"][0]["index"]] = (
            streamed.get(c["choices"][0]["index"], "") + c["choices"][0]["text"]
        )
    assert sorted(streamed) == list(range(5))
    # The SDK reassembles the same five completions, as the non-streamed call returns them.
    texts: dict[int, str] = {}
    for chunk in openai_client.completions.create(**{k: v for k, v in body.items()
                                                     if k not in ("seed", "ignore_eos")},
                                                  seed=3, extra_body={"ignore_eos": True}):  # fmt: skip
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == streamed
    plain = openai_client.completions.create(
        model=MODEL_NAME, prompt="one two", max_tokens=4, n=5, temperature=0.9, seed=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert {c.index: c.text for c in plain.choices} == streamed


def test_chat_n_stream_one_choice_per_chunk(openai_client):
    texts: dict[int, str] = {}
    for chunk in openai_client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], n=3, max_tokens=3,
        stream=True, temperature=0.9, seed=5,
    ):  # fmt: skip
        assert len(chunk.choices) == 1
        choice = chunk.choices[0]
        texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(texts) == [0, 1, 2]


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_docs_are_public_with_an_api_key(server, path):
    assert httpx.get(server.url + path).status_code == 200
