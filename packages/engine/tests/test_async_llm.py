"""AsyncLLM: concurrent streams, cancellation mid-way, deltas, errors before the first yield."""

from __future__ import annotations

import asyncio
import time

import pytest

from leaflm.engine import LLM, AsyncLLM, SamplingParams
from leaflm.engine.testing import random_token_prompts


async def _wait_idle(engine: AsyncLLM, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = engine.stats()
        if s.num_blocks_free == s.num_blocks_total and not engine.engine.requests:
            return
        await asyncio.sleep(0.02)


def test_32_streams_some_cancelled(llama_dir, assert_no_leaks):
    prompts = random_token_prompts(32, vocab=380, lo=4, hi=30, seed=4)
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    expected = [
        o.outputs[0].token_ids
        for o in LLM(str(llama_dir), kv_cache_memory="4MiB").generate(
            prompts, greedy, use_tqdm=False
        )
    ]

    async def main():
        engine = AsyncLLM(str(llama_dir), block_size=4, kv_cache_memory=40 * 2048)
        try:

            async def consume(i: int):
                kind = "delta" if i % 2 else "cumulative"
                params = SamplingParams(
                    temperature=0.0, max_tokens=12, ignore_eos=True, output_kind=kind
                )
                tokens: list[int] = []
                last = None
                async for out in engine.generate(prompts[i], params, request_id=f"req-{i}"):
                    comp = out.outputs[0]
                    tokens = tokens + comp.token_ids if kind == "delta" else comp.token_ids
                    last = out
                    if i % 4 == 3 and len(tokens) >= 3:
                        return "broke", tokens
                return last.outputs[0].finish_reason, tokens

            tasks = [asyncio.create_task(consume(i)) for i in range(32)]
            await asyncio.sleep(0.05)
            for i in range(0, 32, 8):  # cancel some tasks outright, mid-stream
                tasks[i].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            await _wait_idle(engine)
            return engine, results
        finally:
            await engine.shutdown()

    engine, results = asyncio.run(main())
    for i, res in enumerate(results):
        if i % 8 == 0:
            assert isinstance(res, asyncio.CancelledError) or res[0] == "length"
            continue
        reason, tokens = res
        if i % 4 == 3:
            assert reason == "broke" and tokens == expected[i][: len(tokens)]
        else:
            assert reason == "length" and tokens == expected[i], i
    assert_no_leaks(engine)


def test_abort_ends_stream_and_errors_come_first(llama_dir, assert_no_leaks):
    async def main():
        engine = AsyncLLM(str(llama_dir), kv_cache_memory="4MiB")
        try:
            with pytest.raises(ValueError, match="temperature"):
                SamplingParams(temperature=-1)
            with pytest.raises(ValueError, match="empty"):
                async for _ in engine.generate("", SamplingParams(), "e1"):
                    pass
            with pytest.raises(ValueError, match="max_model_len"):
                async for _ in engine.generate([5] * 10_000, SamplingParams(), "e2"):
                    pass
            params = SamplingParams(max_tokens=400, ignore_eos=True, output_kind="delta")
            outs = []
            async for out in engine.generate([5, 6, 7], params, "long"):
                outs.append(out)
                if len(outs) == 2:
                    await engine.abort("long")
            assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"
            assert len(outs) < 50
            await _wait_idle(engine)
            return engine
        finally:
            await engine.shutdown()

    assert_no_leaks(asyncio.run(main()))


def test_model_error_fails_requests_and_frees_blocks(llama_dir, assert_no_leaks):
    async def main():
        engine = AsyncLLM(str(llama_dir), kv_cache_memory="4MiB")
        runner = engine.engine.runner
        real, calls = runner.execute, {"n": 0}

        def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected model failure")
            return real(*args, **kwargs)

        runner.execute = flaky
        try:
            params = SamplingParams(max_tokens=10, ignore_eos=True)
            with pytest.raises(RuntimeError, match="injected"):
                async for _ in engine.generate([5, 6, 7, 8], params, "boom"):
                    pass
            # The engine keeps serving after the failure.
            outs = [o async for o in engine.generate([9, 10, 11], params, "after")]
            assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 10
            await _wait_idle(engine)
            return engine
        finally:
            await engine.shutdown()

    assert_no_leaks(asyncio.run(main()))
