"""20 concurrent streaming clients, half of them hanging up early (some with n=2): every
request ends, in-flight counts drop to zero and no KV block stays in use (read via /metrics)."""

from __future__ import annotations

import asyncio
import time

import httpx
from gateway_testenv import MODEL_NAME

from leaflm.client.bodies import parse_metrics


async def _client(http: httpx.AsyncClient, i: int, busy: asyncio.Event) -> str:
    leaves = i % 2 == 1
    n = 2 if i % 4 in (1, 2) else 1
    body = {
        "model": MODEL_NAME,
        "stream": True,
        "n": n,
        "temperature": 1.0,
        "seed": i,
        "ignore_eos": True,
        "max_tokens": 200 if leaves else 12,
    }
    if i % 3 == 0:
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": f"hi {i}"}]
    else:
        path, body["prompt"] = "/v1/completions", f"the stream number {i} runs"
    events = 0
    async with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line:
                continue
            events += 1
            if leaves and events == 3:
                await busy.wait()  # keep the request alive until /metrics saw it running
                return "left"  # leaving the block closes the connection mid-stream
            if line == "data: [DONE]":
                return "done"
    return "ended"


async def _run(server, auth) -> tuple[list[str], dict[str, float]]:
    busy = asyncio.Event()
    async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=120) as http:
        tasks = [asyncio.create_task(_client(http, i, busy)) for i in range(20)]
        peak: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            peak = parse_metrics((await http.get("/metrics")).text)
            if peak["leaflm:kv_cache_blocks_used"] > 0 and peak["leaflm:num_requests_running"] > 0:
                break
            await asyncio.sleep(0.05)
        busy.set()
        return await asyncio.gather(*tasks), peak


def _settled(server) -> dict[str, float]:
    deadline = time.monotonic() + 30
    while True:
        samples = parse_metrics(httpx.get(server.url + "/metrics").text)
        idle = (
            samples["leaflm:num_requests_running"] == 0
            and samples["leaflm:num_requests_waiting"] == 0
            and samples["leaflm:kv_cache_blocks_used"] == 0
        )
        if idle or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_disconnecting_stream_clients_free_all_blocks(server, auth):
    before = parse_metrics(httpx.get(server.url + "/metrics").text)
    results, peak = asyncio.run(_run(server, auth))
    assert results.count("left") == 10 and results.count("done") == 10
    assert peak["leaflm:kv_cache_blocks_used"] > 0  # the check below could fail
    after = _settled(server)
    assert after["leaflm:kv_cache_blocks_used"] == 0
    assert after["leaflm:num_requests_running"] == 0
    assert after["leaflm:gateway_requests_in_flight"] == 0
    assert after["leaflm:kv_cache_blocks_total"] == before["leaflm:kv_cache_blocks_total"]
    # The leavers were stopped early: run to the end they would add 3000 tokens
    # (5 with n=2, 5 with n=1, 200 each) to the finishers' 180.
    generated = after["leaflm:generation_tokens_total"] - before["leaflm:generation_tokens_total"]
    print("generated tokens", generated)
    assert 180 <= generated < 180 + 1500
    assert httpx.get(server.url + "/health").status_code == 200
