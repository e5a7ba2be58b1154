"""A small stand-in with AsyncLLM's interface, for gateway paths the real engine rarely hits.

It streams deterministic tokens at a controllable pace and keeps a block count, so tests
can drive queue limits, engine errors and disconnects without model compute.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Completion:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Any]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class _Output:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[_Completion]
    finished: bool
    metrics: Any = None
    prompt_logprobs: Any = None


@dataclass
class _Stats:
    num_running: int
    num_waiting: int
    num_swapped: int
    num_blocks_total: int
    num_blocks_free: int
    prefix_cache_hit_rate: float
    prompt_tokens_total: int
    generation_tokens_total: int


@dataclass
class _ModelConfig:
    model: str = "fake/model"
    served_name: str = "fake-model"
    max_model_len: int = 128


@dataclass
class FakeEngine:
    """Emits token `i % 50 + 10` every `delay_s`; one block per sequence while it runs."""

    tokenizer: Any
    delay_s: float = 0.01
    fail_with: Exception | None = None
    fail_at_step: int | None = None
    model_config: _ModelConfig = field(default_factory=_ModelConfig)
    blocks_total: int = 64
    blocks_used: int = 0
    running: int = 0
    aborted: list[str] = field(default_factory=list)
    abort_requested: set[str] = field(default_factory=set)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def stats(self) -> _Stats:
        return _Stats(self.running, 0, 0, self.blocks_total,
                      self.blocks_total - self.blocks_used, 0.0, 0, 0)  # fmt: skip

    async def abort(self, request_id: str) -> None:
        """Like AsyncLLM: the request's stream ends with finish_reason "abort"."""
        self.aborted.append(request_id)
        self.abort_requested.add(request_id)

    async def shutdown(self) -> None:
        pass

    async def generate(self, prompt: Any, params: Any, request_id: str):
        if self.fail_with is not None:
            raise self.fail_with
        n, max_tokens = params.n, params.max_tokens
        self.running += 1
        self.blocks_used += n
        done = False
        try:
            for step in range(max_tokens):
                await asyncio.sleep(self.delay_s)
                if request_id in self.abort_requested:
                    outs = [_Completion(i, "", [], finish_reason="abort") for i in range(n)]
                    yield _Output(request_id, None, list(prompt), outs, True)
                    done = True
                    return
                if step == self.fail_at_step:
                    raise RuntimeError("the engine loop failed")
                tid = step % 50 + 10
                last = step == max_tokens - 1
                reason = "length" if last else None
                text = self.tokenizer.decode([tid])
                outs = [_Completion(i, text, [tid], finish_reason=reason) for i in range(n)]
                yield _Output(request_id, None, list(prompt), outs, last)
            done = True
        finally:
            if not done:
                self.aborted.append(request_id)
            self.running -= 1
            self.blocks_used -= n
