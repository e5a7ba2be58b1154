"""Running requests on the engine: prompt tokenization, timing, and accumulating deltas.

Every route asks the engine for "delta" outputs: streaming routes forward each delta, the
others fold them into `Completion`s here. One code path for both keeps the latency metrics
identical for streamed and non-streamed requests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from leaflm.gateway.errors import APIError, bad_request
from leaflm.gateway.state import Gateway
from leaflm.gateway.streams import merge


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class Prompt:
    """A prompt as text (for echo) and the token ids the engine runs."""

    text: str
    token_ids: list[int]


def tokenize_prompt(gw: Gateway, prompt: str | list[int], param: str = "prompt") -> Prompt:
    """Token ids for one prompt; 400 for an empty prompt or ids outside the vocabulary."""
    tok = gw.tokenizer
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request(f"{param} must not be empty", param=param)
        return Prompt(prompt, list(tok.encode(prompt)))
    if not prompt:
        raise bad_request(f"{param} must not be empty", param=param)
    vocab = len(tok)
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise bad_request(
            f"{param} contains token ids outside the vocabulary [0, {vocab}): {bad[:5]}",
            param=param,
        )
    return Prompt(tok.decode(prompt), list(prompt))


class RequestAborted(Exception):
    """The engine aborted a request the client still waits for (shutdown, engine failure)."""


async def _timed(gw: Gateway, prompt: Prompt, params: Any, request_id: str) -> AsyncIterator[Any]:
    """The engine's delta stream for one prompt, with latency metrics observed.

    An abort the client did not ask for ends the stream with RequestAborted, so streams
    close with an error event and JSON responses become 503s instead of truncated text.
    """
    timer = gw.metrics.timer()
    gw.in_flight_ids.add(request_id)
    try:
        async for out in gw.engine.generate(prompt.token_ids, params, request_id):
            timer.tokens(max((len(c.token_ids) for c in out.outputs), default=0))
            if out.finished:
                timer.finish([c.finish_reason or "abort" for c in out.outputs])
            if any(c.finish_reason == "abort" for c in out.outputs):
                raise RequestAborted(gw.stop_reason or "The request was aborted by the engine.")
            yield out
    finally:
        gw.in_flight_ids.discard(request_id)


def run(
    gw: Gateway, prompts: list[Prompt], params: list[Any], request_id: str
) -> AsyncIterator[tuple[int, Any]]:
    """(prompt index, RequestOutput delta) for all prompts, as tokens arrive."""
    iterators = [
        _timed(gw, p, sp, request_id if len(prompts) == 1 else f"{request_id}-{i}")
        for i, (p, sp) in enumerate(zip(prompts, params, strict=True))
    ]
    return merge(iterators)


@dataclass
class Completion:
    """One completion folded from deltas."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Any]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    cumulative_logprob: float | None = None


@dataclass
class PromptResult:
    """All completions of one prompt, plus what the engine reported about the prompt."""

    prompt: Prompt
    completions: dict[int, Completion] = field(default_factory=dict)
    prompt_logprobs: list[dict[int, Any] | None] | None = None

    def add(self, out: Any) -> None:
        if out.prompt_logprobs is not None and self.prompt_logprobs is None:
            self.prompt_logprobs = list(out.prompt_logprobs)
        for c in out.outputs:
            acc = self.completions.setdefault(c.index, Completion())
            acc.text += c.text
            acc.token_ids += list(c.token_ids)
            if c.logprobs is not None:
                acc.logprobs = (acc.logprobs or []) + list(c.logprobs)
            if c.finish_reason is not None:
                acc.finish_reason = c.finish_reason
                acc.stop_reason = c.stop_reason
            if c.cumulative_logprob is not None:
                acc.cumulative_logprob = c.cumulative_logprob

    def ordered(self) -> list[Completion]:
        return [self.completions[i] for i in sorted(self.completions)]


async def collect(
    gw: Gateway, prompts: list[Prompt], params: list[Any], request_id: str
) -> list[PromptResult]:
    """Run all prompts to completion; ValueError from the engine becomes a 400."""
    results = [PromptResult(p) for p in prompts]
    try:
        async for i, out in run(gw, prompts, params, request_id):
            results[i].add(out)
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    except RequestAborted as exc:
        raise APIError(503, str(exc), retry_after=1) from exc
    return results


def usage(results: list[PromptResult]) -> dict[str, int]:
    prompt_tokens = sum(len(r.prompt.token_ids) for r in results)
    completion_tokens = sum(len(c.token_ids) for r in results for c in r.completions.values())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
