"""Issue 13's defects, each against a real server on 127.0.0.1: unbounded n/best_of, strict
types, TGI's limits, echo scoring, body and prompt size bounds (all fail on the old code)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from gateway_testenv import API_KEY


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _post(server, path: str, body: object, raw: bool = False, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    content = body if raw else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers=headers, timeout=30, **kw)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 1, "best_of": 2**63 - 1}, "best_of"),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 1, "n": 10**9}, "n"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "n": 10**6},
         "n"),
    ],
)  # fmt: skip
def test_unbounded_candidates_are_refused_at_once(server, path, body, param):
    before = _rss_bytes()
    start = time.monotonic()
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert time.monotonic() - start < 2.0
    assert _rss_bytes() - before < 64 * 2**20
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("best_of", [9, 10000])
def test_tgi_best_of_beyond_info_is_422(server, best_of):
    assert httpx.get(server.url + "/info").json()["max_best_of"] == 8
    body = {"inputs": "Hi", "parameters": {"best_of": best_of, "do_sample": True}}
    r = _post(server, "/generate", body)
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    assert "best_of" in r.json()["error"]


def test_nine_stop_sequences_are_refused_where_info_says_eight(server):
    stops = [f"s{i}" for i in range(9)]
    assert httpx.get(server.url + "/info").json()["max_stop_sequences"] == 8
    r = _post(server, "/generate", {"inputs": "Hi", "parameters": {"stop": stops}})
    assert r.status_code == 422
    r = _post(server, "/v1/completions", {"prompt": "Hi", "stop": stops})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    r = _post(server, "/v1/completions", {"prompt": "Hi", "stop": stops[:8], "max_tokens": 2})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/completions", '{"prompt": "Hi", "temperature": NaN}', "temperature"),
        ("/v1/completions", '{"prompt": "Hi", "temperature": Infinity}', "temperature"),
        ("/v1/completions", '{"prompt": "Hi", "temperature": true}', "temperature"),
        ("/v1/completions", '{"prompt": "Hi", "repetition_penalty": NaN}', "repetition_penalty"),
        ("/v1/completions", '{"prompt": [[false]]}', "prompt"),
        ("/v1/completions", '{"prompt": [true, 1]}', "prompt"),
        ("/v1/completions", '{"prompt": "Hi", "max_tokens": 2.5}', "max_tokens"),
        ("/v1/completions", '{"prompt": "Hi", "logit_bias": {"1": 500}}', "logit_bias"),
        ("/v1/completions", '{"prompt": "Hi", "logit_bias": {"x": 5}}', "logit_bias"),
        ("/v1/completions", '{"prompt": "Hi", "functions": [{"name": "f"}]}', "functions"),
        ("/v1/chat/completions",
         '{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "xml"}}',
         "response_format"),
        ("/v1/chat/completions",
         '{"messages": [{"role": "user", "content": "Hi"}], "tools": []}', "tools"),
        ("/detokenize", '{"tokens": [false]}', "tokens"),
    ],
)  # fmt: skip
def test_wrong_types_and_unsupported_fields_are_400_naming_the_field(server, path, raw, param):
    r = _post(server, path, raw, raw=True)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert param in error["message"]


@pytest.mark.parametrize(
    "raw",
    ['{"inputs": "Hi", "parameters": {"temperature": NaN}}',
     '{"inputs": "Hi", "parameters": {"temperature": true}}',
     '{"inputs": "Hi", "parameters": {"grammar": {"type": "xml", "value": ""}}}'],
)  # fmt: skip
def test_tgi_wrong_types_are_422(server, raw):
    r = _post(server, "/generate", raw, raw=True)
    assert r.status_code == 422 and r.json()["error_type"] == "validation"


def _engine_prompt_logprobs(engine, ids: list[int], top: int, request_id: str) -> list:
    """The served engine's own prompt_logprobs for `ids` (the reference for the routes)."""
    import asyncio

    from leaflm.engine import SamplingParams

    async def run():
        params = SamplingParams(max_tokens=1, prompt_logprobs=top, temperature=0)
        async for out in engine.generate(ids, params, request_id):
            last = out
        return last.prompt_logprobs

    return asyncio.run(run())


def test_echo_with_max_tokens_zero_scores_the_prompt(server, engine):
    prompt = "The river runs past the mill"
    r = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 0, "echo": True,
                                          "logprobs": 1, "temperature": 0})  # fmt: skip
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == prompt
    assert r.json()["usage"]["completion_tokens"] == 0
    ids = engine.get_tokenizer().encode(prompt)
    lps = choice["logprobs"]["token_logprobs"]
    assert len(lps) == len(ids) and lps[0] is None

    ref = _engine_prompt_logprobs(engine, ids, 1, "echo-reference")
    expected = [None] + [ref[q][t].logprob for q, t in enumerate(ids) if q > 0]
    assert lps[1:] == pytest.approx(expected[1:], abs=1e-5)
    r = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == ""


def test_prompt_logprobs_equal_the_engine_s(server, engine):
    prompt = "one two three four"
    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0, "prompt_logprobs": 2}
    r = _post(server, "/v1/completions", body)
    assert r.status_code == 200, r.text
    served = r.json()["choices"][0]["prompt_logprobs"]
    ids = engine.get_tokenizer().encode(prompt)

    ref = _engine_prompt_logprobs(engine, ids, 2, "plp-reference")
    assert served[0] is None and len(served) == len(ids)
    for got, want in zip(served[1:], ref[1:], strict=True):
        assert {int(k) for k in got} == set(want)
        for tid, lp in want.items():
            assert got[str(tid)]["logprob"] == pytest.approx(lp.logprob, abs=1e-5)
            assert got[str(tid)]["rank"] == lp.rank
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "prompt_logprobs": 0}
    r = _post(server, "/v1/chat/completions", chat)
    assert r.status_code == 200 and r.json()["prompt_logprobs"][0] is None


def test_best_of_returns_max_tokens_per_choice(server):
    body = {"prompt": "The sky is", "max_tokens": 8, "temperature": 0.8, "seed": 1,
            "logprobs": 0, "ignore_eos": True}  # fmt: skip
    for best_of in (2, 3, 4):
        r = _post(server, "/v1/completions", {**body, "best_of": best_of})
        assert r.status_code == 200, r.text
        (choice,) = r.json()["choices"]
        assert r.json()["usage"]["completion_tokens"] == 8
        assert len(choice["logprobs"]["tokens"]) == 8


def test_huge_prompt_is_refused_fast_without_stalling_health(server):
    from leaflm.gateway.server import ServerThread  # noqa: F401  (the server fixture is one)

    prompt = "hello " * 2_000_000  # 12 MB: below the body limit, far above the context
    latencies: list[float] = []

    def probe() -> None:
        for _ in range(5):
            t = time.monotonic()
            httpx.get(server.url + "/health", timeout=10)
            latencies.append(time.monotonic() - t)
            time.sleep(0.05)

    thread = threading.Thread(target=probe)
    thread.start()
    start = time.monotonic()
    r = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 4})
    thread.join()
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert time.monotonic() - start < 5.0
    assert max(latencies) < 1.0
    r = _post(server, "/tokenize", {"prompt": prompt})
    assert r.status_code == 400


def test_body_over_the_limit_is_413(engine):
    from leaflm.gateway.server import ServerThread
    from leaflm.gateway.settings import GatewaySettings

    with ServerThread(engine, GatewaySettings(max_request_body_bytes=1000)) as srv:
        big = json.dumps({"prompt": "x" * 2000})
        r = httpx.post(srv.url + "/v1/completions", content=big,
                       headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]["message"]

        def chunks():
            yield big[:600].encode()
            yield big[600:].encode()

        r = httpx.post(srv.url + "/generate", content=chunks(),
                       headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 413 and r.json()["error_type"] == "validation"
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 200
