"""Hard limits on one request, checked before any work is done (tokenizing, queueing).

Each limit exists because its absence let one request hurt everyone: `best_of` of 2**63
forked sequences until the kernel killed the server; a 50 MB prompt was tokenized on the event
loop for 47 s before its context-length 400. Every refusal names the field and the limit.
"""

from __future__ import annotations

from leaflm.gateway.errors import APIError, bad_request
from leaflm.gateway.state import Gateway

MAX_LOGPROBS = 20  # OpenAI's bound for top_logprobs; vLLM's default max_logprobs


def check_n(gw: Gateway, n: int, best_of: int | None, n_field: str = "n") -> None:
    """The server's upper bound (the schemas already hold n, best_of >= 1)."""
    limit = gw.max_n
    if n > limit:
        raise bad_request(f"{n_field} must be <= {limit}, got {n}", param=n_field)
    if best_of is not None and best_of > limit:
        raise bad_request(f"best_of must be <= {limit}, got {best_of}", param="best_of")


def check_stop(gw: Gateway, stop: str | list[str] | None) -> None:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    settings = gw.settings
    if len(stops) > settings.max_stop_sequences:
        raise bad_request(
            f"stop may hold at most {settings.max_stop_sequences} sequences, got {len(stops)}",
            param="stop",
        )
    longest = max((len(s) for s in stops), default=0)
    if longest > settings.max_stop_length:
        raise bad_request(
            f"each stop sequence must be at most {settings.max_stop_length} characters, "
            f"got one of {longest}",
            param="stop",
        )


def check_logprobs(value: int | None, field: str) -> None:
    if value is not None and not 0 <= value <= MAX_LOGPROBS:
        raise bad_request(f"{field} must be in [0, {MAX_LOGPROBS}], got {value}", param=field)


def check_prompt_count(gw: Gateway, count: int) -> None:
    if count > gw.settings.max_prompts:
        raise bad_request(
            f"prompt may hold at most {gw.settings.max_prompts} prompts, got {count}",
            param="prompt",
        )


def check_prompt_size(gw: Gateway, text: str, param: str = "prompt") -> None:
    """Refuse, without tokenizing, a text too long to fit the context in any tokenization.

    No token of the vocabulary decodes to more than `gw.max_token_bytes` bytes, so a text of
    more than `max_model_len * max_token_bytes` bytes needs more than max_model_len tokens.
    """
    limit = gw.max_model_len * gw.max_token_bytes
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        raise APIError(
            400,
            f"{param} is too long: {len(text)} characters cannot fit this model's maximum "
            f"context length of {gw.max_model_len} tokens.",
            param=param,
            code="context_length_exceeded",
        )
