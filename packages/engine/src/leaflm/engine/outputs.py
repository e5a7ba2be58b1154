"""What the engine hands back: RequestOutput, CompletionOutput, Logprob, metrics and stats.

Shapes follow vLLM so gateway code and user code written for vLLM read them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Logprob:
    """One token's log-probability, its rank in the distribution (1 = most likely) and text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """One completion of a request (there are `n` of them)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None  # None while running, then "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # matched stop string or stop token id

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Timestamps (time.monotonic seconds) of one request's life, for TTFT/TPOT figures."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    """The state of one request after a step: prompt, its completions, whether it is done."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None


@dataclass
class EngineStats:
    """A snapshot of the engine for tests and Prometheus; counters are cumulative since start."""

    num_running: int
    num_waiting: int
    num_swapped: int
    num_blocks_total: int
    num_blocks_free: int
    prefix_cache_hit_rate: float
    prompt_tokens_total: int
    generation_tokens_total: int
