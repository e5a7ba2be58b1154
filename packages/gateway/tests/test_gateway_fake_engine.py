"""Gateway paths that need a controllable engine: readiness, queue limit, engine errors,
disconnects. A real uvicorn server on 127.0.0.1 runs a FakeEngine (no model compute)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from gateway_fake_engine import FakeEngine

from leaflm.engine.testing import train_tiny_tokenizer
from leaflm.gateway.server import ServerThread
from leaflm.gateway.settings import GatewaySettings


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(train_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def _body(**kw):
    return {"model": "fake-model", "prompt": "the model", "max_tokens": 5, **kw}


def test_not_ready_is_503_with_retry_after():
    with ServerThread(None) as server:
        r = httpx.post(server.url + "/v1/completions", json=_body())
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert "not ready" in r.json()["error"]["message"]
        assert httpx.get(server.url + "/health").status_code == 503


def test_queue_limit_gives_429_then_recovers(tokenizer):
    engine = FakeEngine(tokenizer, delay_s=0.05)
    with ServerThread(engine, GatewaySettings(max_queue=1)) as server:

        async def two_at_once():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                return await asyncio.gather(
                    client.post("/v1/completions", json=_body(max_tokens=10)),
                    client.post("/v1/completions", json=_body(max_tokens=10)),
                )

        statuses = sorted(r.status_code for r in asyncio.run(two_at_once()))
        assert statuses == [200, 429]
        r = httpx.post(server.url + "/v1/completions", json=_body())
        assert r.status_code == 200
        assert r.json()["choices"][0]["finish_reason"] == "length"


def test_queue_limit_429_body_and_header(tokenizer):
    engine = FakeEngine(tokenizer, delay_s=0.05)
    with ServerThread(engine, GatewaySettings(max_queue=1, retry_after_s=3)) as server:
        body = _body(stream=True, max_tokens=20)
        with (
            httpx.Client(base_url=server.url, timeout=30) as client,
            client.stream("POST", "/v1/completions", json=body),
        ):
            r = client.post("/v1/completions", json=_body())
        assert r.status_code == 429
        assert r.headers["retry-after"] == "3"
        err = r.json()["error"]
        assert err["code"] == "rate_limit_exceeded" and "max_queue=1" in err["message"]


def test_engine_value_error_is_400_naming_it(tokenizer):
    engine = FakeEngine(tokenizer, fail_with=ValueError("prompt_logprobs is not supported"))
    with ServerThread(engine) as server:
        for stream in (False, True):
            r = httpx.post(server.url + "/v1/completions", json=_body(stream=stream))
            assert r.status_code == 400, r.text
            assert "prompt_logprobs is not supported" in r.json()["error"]["message"]
        assert httpx.get(server.url + "/health").status_code == 200


def test_disconnect_aborts_stream_and_non_stream(tokenizer):
    engine = FakeEngine(tokenizer, delay_s=0.02)
    with ServerThread(engine) as server:
        body = _body(stream=True, n=2, max_tokens=100)
        with (
            httpx.Client(base_url=server.url, timeout=30) as client,
            client.stream("POST", "/v1/completions", json=body) as r,
        ):
            next(r.iter_lines())
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", json=_body(max_tokens=100), timeout=0.3)
        deadline = time.monotonic() + 5
        while engine.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.running == 0 and engine.blocks_used == 0
        assert len(engine.aborted) == 2
        metrics = httpx.get(server.url + "/metrics").text
        assert "leaflm:kv_cache_blocks_used 0.0" in metrics
        assert "leaflm:gateway_requests_in_flight 0.0" in metrics


def test_engine_failure_mid_stream_ends_with_error_event(tokenizer):
    engine = FakeEngine(tokenizer, fail_at_step=2)
    with ServerThread(engine) as server:
        with httpx.stream("POST", server.url + "/v1/completions", json=_body(stream=True)) as r:
            lines = [line for line in r.iter_lines() if line]
        assert r.status_code == 200 and len(lines) == 4 and lines[-1] == "data: [DONE]"
        assert "Generation failed (RuntimeError)" in lines[-2] and '"error"' in lines[-2]
        assert "the engine loop failed" not in lines[-2]  # internals stay in the server log
        body = {"inputs": "a", "parameters": {"max_new_tokens": 5}}
        with httpx.stream("POST", server.url + "/generate_stream", json=body) as r:
            last = [line for line in r.iter_lines() if line][-1]
        assert '"error_type":"generation"' in last
        assert engine.running == 0
