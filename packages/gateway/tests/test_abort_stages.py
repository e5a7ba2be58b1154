"""A client that leaves aborts its request at whatever stage it is in: queued behind a full
batch, in a chunked prefill, just forked into n candidates, or decoding. Every block comes
back and the server stays healthy (a small batch and token budget make each stage last)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from leaflm.client.bodies import parse_metrics
from leaflm.gateway.server import ServerThread


@pytest.fixture(scope="module")
def slow_server(tiny_model_dir):
    from leaflm.engine import AsyncLLM

    engine = AsyncLLM(
        str(tiny_model_dir), kv_cache_memory="16MiB", max_model_len=256, max_num_seqs=4,
        max_num_batched_tokens=16, enable_prefix_caching=False, seed=0,
    )  # fmt: skip
    try:
        with ServerThread(engine) as server:
            yield server
    finally:
        asyncio.run(engine.shutdown())


def _metrics(server) -> dict[str, float]:
    return parse_metrics(httpx.get(server.url + "/metrics").text)


async def _leave_after(http: httpx.AsyncClient, body: dict, delay_s: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):  # the client gives up: connection closes
        await asyncio.wait_for(http.post("/v1/completions", json=body), timeout=delay_s)


async def _scenario(server) -> None:
    long_prompt = " ".join(f"w{i % 50}" for i in range(200))  # ~13 prefill steps of 16 tokens
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        blocker = {"prompt": "a", "max_tokens": 200, "ignore_eos": True, "n": 4}
        leavers = [
            _leave_after(http, blocker, 1.5),  # fills the batch, then leaves while decoding
            _leave_after(http, {"prompt": "b", "max_tokens": 50}, 0.5),  # queued behind it
            _leave_after(http, {"prompt": long_prompt, "max_tokens": 50}, 0.8),  # queued/prefill
        ]
        await asyncio.gather(*leavers)
        prefill = {"prompt": long_prompt, "max_tokens": 50, "ignore_eos": True}
        fork = {"prompt": long_prompt, "max_tokens": 50, "ignore_eos": True, "n": 3}
        for body, delay in ((prefill, 0.05), (prefill, 0.15), (fork, 0.3), (fork, 0.5)):
            await _leave_after(http, body, delay)


def test_leaving_at_every_stage_frees_everything(slow_server):
    before = _metrics(slow_server)
    asyncio.run(_scenario(slow_server))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = _metrics(slow_server)
        if after["leaflm:kv_cache_blocks_used"] == 0 and after["leaflm:num_requests_running"] == 0:
            break
        time.sleep(0.1)
    assert after["leaflm:kv_cache_blocks_used"] == 0
    assert after["leaflm:num_requests_waiting"] == 0
    assert after["leaflm:gateway_requests_in_flight"] == 0
    generated = after["leaflm:generation_tokens_total"] - before["leaflm:generation_tokens_total"]
    assert generated < 800 + 50 + 50 + 4 * 150  # well below running everything to the end
    r = httpx.post(slow_server.url + "/v1/completions", json={"prompt": "ok", "max_tokens": 2})
    assert r.status_code == 200
