"""leaflm.client against a real server: typed results, streaming, TGI, errors, retries."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from client_testenv import API_KEY, MODEL_NAME

from leaflm.client import AsyncClient, Client, LeaflmAPIError, LeaflmConnectionError, RetryPolicy
from leaflm.client.types import ChatCompletion, Completion, Generation, StreamEvent

PROMPT = "The green leaf"


@pytest.fixture()
def client(server):
    with Client(server.url, api_key=API_KEY, timeout=60) as c:
        yield c


def test_completions_and_stream_agree(client):
    full = client.completions(PROMPT, model=MODEL_NAME, max_tokens=8, temperature=0)
    assert isinstance(full, Completion)
    assert full.usage.completion_tokens == 8 and full.choices[0].finish_reason == "length"
    chunks = list(
        client.completions(
            PROMPT, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == 8


def test_chat_and_chat_stream(client):
    messages = [{"role": "user", "content": "hello"}]
    full = client.chat(messages, max_tokens=6, temperature=0)
    assert isinstance(full, ChatCompletion) and full.choices[0].message.role == "assistant"
    chunks = list(client.chat(messages, max_tokens=6, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full.choices[0].message.content


def test_tgi_generate_and_stream(client):
    g = client.generate(PROMPT, max_new_tokens=5, details=True)
    assert isinstance(g, Generation) and g.details.generated_tokens == 5
    events = list(client.generate_stream(PROMPT, max_new_tokens=5))
    assert all(isinstance(e, StreamEvent) for e in events) and len(events) == 5
    assert events[-1].generated_text == g.generated_text
    assert [e.token.id for e in events] == [t.id for t in g.details.tokens]


def test_models_health_metrics(client):
    assert [m.id for m in client.models().data] == [MODEL_NAME]
    assert client.health().ok
    samples = client.metrics()
    assert samples["leaflm:kv_cache_blocks_total"] > 0


def test_errors_are_typed(client, server):
    with pytest.raises(LeaflmAPIError) as exc:
        client.completions(PROMPT, max_tokens=4, temperature=-1)
    assert exc.value.status == 400 and exc.value.param == "temperature"
    assert "temperature" in exc.value.message
    with pytest.raises(LeaflmAPIError) as exc:
        client.completions(PROMPT, model="other", max_tokens=4)
    assert exc.value.status == 404 and exc.value.type == "invalid_request_error"
    with pytest.raises(LeaflmAPIError) as exc:
        client.generate(PROMPT, max_new_tokens=-1)
    assert exc.value.status == 422 and exc.value.type == "validation"
    with Client(server.url, api_key="wrong") as bad, pytest.raises(LeaflmAPIError) as exc:
        bad.models()
    assert exc.value.status == 401


def test_connection_error_after_retries():
    from leaflm.gateway.server import free_port

    policy = RetryPolicy(max_retries=2, backoff_s=0.01)
    with Client(f"http://127.0.0.1:{free_port()}", retry=policy, timeout=2) as c:
        assert not c.health().ok
        with pytest.raises(LeaflmConnectionError):
            c.completions(PROMPT)


def test_retry_on_429_honours_retry_after(busy_server):
    """Two concurrent requests against max_queue=1: one is refused (429) and retried."""
    no_retry = Client(busy_server.url, retry=RetryPolicy(max_retries=0))
    patient = Client(busy_server.url, retry=RetryPolicy(max_retries=5, backoff_s=0.05))
    started = threading.Event()
    results: dict[str, object] = {}

    def long_request() -> None:
        stream = patient.completions(PROMPT, max_tokens=150, ignore_eos=True, stream=True)
        started.set()
        results["long"] = len(list(stream))

    t = threading.Thread(target=long_request)
    t.start()
    assert started.wait(30)
    with pytest.raises(LeaflmAPIError) as exc:
        no_retry.completions(PROMPT, max_tokens=2)
    assert exc.value.status == 429
    t0 = time.monotonic()
    second = patient.completions(PROMPT, max_tokens=2)  # waits for the slot, 1 s per retry
    waited = time.monotonic() - t0
    t.join(60)
    assert second.usage.completion_tokens == 2 and results["long"] > 0
    assert waited >= 0.9  # Retry-After: 1 was honoured at least once
    no_retry.close()
    patient.close()


def test_async_client_stream_and_early_close(server):
    async def main() -> tuple[str, str, float]:
        async with AsyncClient(server.url, api_key=API_KEY) as ac:
            full = await ac.completions(PROMPT, max_tokens=6, temperature=0)
            stream = await ac.completions(PROMPT, max_tokens=6, temperature=0, stream=True)
            text = "".join([c.choices[0].text async for c in stream if c.choices])
            long = await ac.completions(PROMPT, max_tokens=200, ignore_eos=True, stream=True)
            async for _ in long:
                break
            await long.aclose()  # hang up early: the server aborts the request
            for _ in range(100):
                used = (await ac.metrics())["leaflm:kv_cache_blocks_used"]
                if used == 0:
                    break
                await asyncio.sleep(0.05)
            return full.choices[0].text, text, used

    full_text, streamed, used = asyncio.run(main())
    assert streamed == full_text
    assert used == 0
