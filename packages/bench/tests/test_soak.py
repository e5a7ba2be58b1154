"""The soak fails when it should: a fake server on 127.0.0.1 plants one fault at a time
(a 500, a stream that never ends, KV blocks that stay in use, RSS that keeps growing, an
invalid request accepted) and each must turn the verdict to FAILED naming the fault, while
the same fake without a fault passes."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from bench_testenv import thread_server
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from leaflm.bench.soak import SoakConfig, invalid_cases, parse_gauges, run_soak
from leaflm.bench.soak_check import evaluate, rss_growth, summary

MODEL = "fake"


def fake_app(fault: str = "") -> FastAPI:
    """A tiny OpenAI-shaped streaming server whose /metrics are leaflm's gauges."""
    app = FastAPI()
    state = {"requests": 0, "in_flight": 0, "hoard": []}
    bad = [body for _, body in invalid_cases(MODEL)]  # dicts, and bytes that are not JSON

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": MODEL}]}

    @app.get("/metrics")
    async def metrics():
        used = 3 if fault == "leak_blocks" else state["in_flight"]
        lines = [
            "# TYPE leaflm:kv_cache_blocks_used gauge",
            f"leaflm:kv_cache_blocks_used {float(used)}",
            "# TYPE leaflm:gateway_requests_in_flight gauge",
            f"leaflm:gateway_requests_in_flight {float(state['in_flight'])}",
            "# TYPE leaflm:num_requests_running gauge",
            f"leaflm:num_requests_running {float(state['in_flight'])}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def generate(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"error": {"message": "bad JSON"}}, status_code=400)
        if (body in bad or raw in bad) and fault != "accept_invalid":
            return JSONResponse({"error": {"message": "invalid"}}, status_code=400)
        state["requests"] += 1
        if fault == "500" and state["requests"] % 5 == 0:
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if fault == "leak_rss":  # memory that is written, so it is resident
            state["hoard"].append(bytearray(b"\x01") * (1 << 20))
        tgi = request.url.path == "/generate_stream"
        if not body.get("stream") and not tgi:
            return {"choices": [{"text": "ok", "index": 0}]}
        hang = fault == "hang" and state["requests"] % 7 == 0
        n = body["parameters"]["max_new_tokens"] if tgi else body["max_tokens"]

        def event(i: int) -> dict:
            if not tgi:
                return {"choices": [{"index": 0, "text": f" t{i}"}]}
            last = " ".join(f"t{k}" for k in range(n)) if i == n - 1 else None
            return {"index": i, "token": {"id": i, "text": f" t{i}"}, "generated_text": last}

        async def events():
            state["in_flight"] += 1
            try:
                for i in range(n):
                    await asyncio.sleep(3600 if hang else 0.002)
                    yield f"data: {json.dumps(event(i))}\n\n"
                if not tgi:
                    yield "data: [DONE]\n\n"
            finally:
                state["in_flight"] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    for path in ("/v1/completions", "/v1/chat/completions", "/generate", "/generate_stream"):
        app.post(path)(generate)
    return app


@pytest.fixture()
def serve_fake():
    with contextlib.ExitStack() as servers:  # every fake server stops with the test
        yield lambda fault: servers.enter_context(thread_server(fake_app(fault)))


def _soak(url: str, **overrides) -> tuple[list[dict], dict]:
    import os

    kw = dict(url=url, pid=os.getpid(), duration_s=4.0, concurrency=4, request_timeout_s=2.0,
              max_output_tokens=8, max_prompt_words=20, disconnect_share=0.2,
              invalid_share=0.2, sample_interval_s=0.1, drain_timeout_s=2.0,
              max_rss_growth_mb=64.0, seed=1)  # fmt: skip
    kw.update(overrides)
    config = SoakConfig(**kw)
    raw = run_soak(config)
    return evaluate(raw, config.max_rss_growth_mb), raw


def _failed(checks: list[dict]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in checks if not c["ok"]}


def test_clean_fake_server_passes(serve_fake):
    checks, raw = _soak(serve_fake(""))
    assert _failed(checks) == {}
    kinds = summary(raw)["by_kind"]
    assert kinds["stream"]["ok"] > 0 and kinds["invalid"]["rejected"] > 0
    assert kinds["disconnect"].get("disconnected", 0) > 0
    paths = {r["path"] for r in raw["records"] if r["outcome"] == "ok"}
    assert {"/v1/completions", "/v1/chat/completions", "/generate_stream"} <= paths


@pytest.mark.parametrize(
    ("fault", "check", "words"),
    [
        ("500", "no 5xx", "answered 5xx"),
        ("hang", "no hang", "requests hung"),
        ("leak_blocks", "KV blocks freed", "3 blocks in use"),
        ("accept_invalid", "no other failures", "unexpected_status"),
    ],
)
def test_planted_fault_fails_the_soak(serve_fake, fault, check, words):
    checks, _ = _soak(serve_fake(fault))
    failed = _failed(checks)
    assert check in failed, checks
    assert words in failed[check]


def test_growing_rss_fails_the_soak(serve_fake):
    # 1 MB kept per request; the fake runs in this process, so this process's RSS grows (by
    # at most 120 MB: the test session's memory is bounded too)
    checks, _ = _soak(serve_fake("leak_rss"), invalid_share=0.0, max_requests=120,
                      max_rss_growth_mb=16.0)  # fmt: skip
    assert "RSS bounded" in _failed(checks)


def test_rss_growth_compares_early_and_late_load():
    samples = [{"t": float(t), "rss_mb": 100.0 + (50 if t == 1 else 0) + t} for t in range(9)]
    growth = rss_growth(samples, load_end=8.0)
    assert growth["early_peak_mb"] == 151.0 and growth["late_peak_mb"] == 108.0
    assert growth["growth_mb"] == -43.0
    assert rss_growth(samples[:2], load_end=8.0) is None


def test_missing_evidence_is_a_failure():
    raw = {"records": [{"kind": "stream", "path": "/v1/completions", "start": 0, "end": 1,
                        "status": 200, "outcome": "ok", "chunks": 3, "detail": ""}],
           "samples": [{"t": 0.0, "rss_mb": None, "client_in_flight": 0, "gauges": {},
                        "error": ""}],
           "load_end_s": 1.0, "drained_at_s": None, "final_probe": ""}  # fmt: skip
    failed = _failed(evaluate(raw, 100.0))
    assert "too few RSS samples" in failed["RSS bounded"]
    assert "no leaflm:kv_cache_blocks_used" in failed["KV blocks freed"]


def test_parse_gauges_reads_prometheus_text():
    text = (
        "# HELP leaflm:kv_cache_blocks_used KV-cache blocks in use.\n"
        "# TYPE leaflm:kv_cache_blocks_used gauge\nleaflm:kv_cache_blocks_used 5.0\n"
        "# TYPE leaflm:prompt_tokens counter\nleaflm:prompt_tokens_total 9.0\n"
    )
    assert parse_gauges(text) == {"kv_cache_blocks_used": 5.0}


def test_only_local_hosts():
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        SoakConfig(url="http://example.com:8000")
    with pytest.raises(ValueError, match="sum to <= 1"):
        SoakConfig(url="http://127.0.0.1:1", disconnect_share=0.8, invalid_share=0.5)


@pytest.mark.parametrize(("fault", "code"), [("", 0), ("500", 1)])
def test_cli_exit_code_and_summary(serve_fake, tmp_path, capsys, fault, code):
    import os

    from leaflm.engine.cli import main

    argv = ["bench", "soak", "--url", serve_fake(fault), "--pid", str(os.getpid()),
            "--duration", "3", "--concurrency", "3", "--max-output-tokens", "6",
            "--max-prompt-words", "10", "--sample-interval", "0.1", "--drain-timeout", "2",
            "--request-timeout", "5", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == code
    printed = capsys.readouterr().out
    report = (tmp_path / "report.md").read_text()
    if code:
        assert "soak FAILED" in printed and "FAILED no 5xx" in printed
        assert "**FAILED**" in report and "| no 5xx | FAILED |" in report
    else:
        assert "soak PASSED" in printed and "**PASSED**" in report
