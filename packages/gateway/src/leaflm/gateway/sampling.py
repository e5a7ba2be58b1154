"""Request fields -> engine `SamplingParams`, for the OpenAI and TGI dialects.

OpenAI defaults follow the API (temperature 1, top_p 1); TGI's follow TGI: greedy unless
`do_sample` or a sampling warper (temperature, top_k, top_p, typical_p) is given, which is
why its clients' `temperature: 0.01` style values work. Value checks live in
`SamplingParams`; its ValueError (naming the field) becomes a 400 here.
"""

from __future__ import annotations

from typing import Any

from leaflm.gateway.errors import APIError, bad_request, from_value_error
from leaflm.gateway.limits import (
    check_logprobs,
    check_n,
    check_stop,
)
from leaflm.gateway.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingExtras,
)
from leaflm.gateway.schemas.tgi import GenerateParameters
from leaflm.gateway.state import Gateway
from leaflm.gateway.structured import beam_params, logit_controls, openai_structured, tgi_structured

SAMPLING_FIELDS = (
    "n", "best_of", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "seed", "stop", "stop_token_ids", "ignore_eos",
    "max_tokens", "min_tokens", "logprobs", "prompt_logprobs", "top_logprobs", "logit_bias",
    "allowed_token_ids", "bad_words", "truncate_prompt_tokens",
)  # fmt: skip


def make_params(**kwargs: Any) -> Any:
    """Build SamplingParams; a ValueError becomes a 400 naming the field."""
    from leaflm.engine import SamplingParams

    try:
        return SamplingParams(**kwargs)
    except ValueError as exc:
        raise from_value_error(exc, SAMPLING_FIELDS) from exc
    except TypeError as exc:  # a value of the wrong type slipped through
        raise bad_request(str(exc)) from exc


def check_max_tokens(
    max_tokens: int | None,
    prompt_len: int,
    max_model_len: int,
    field: str = "max_tokens",
    allow_zero: bool = False,
) -> int:
    """The effective max_tokens; 400 when prompt + max_tokens exceed the context window.

    `allow_zero` (echo on completions): 0 means "score the prompt, generate nothing".
    """
    if prompt_len >= max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens, but the prompt "
            f"has {prompt_len} tokens. Please shorten the prompt.",
            param="prompt" if field != "max_new_tokens" else "inputs",
            code="context_length_exceeded",
        )
    room = max_model_len - prompt_len
    if max_tokens is None:
        return room
    if allow_zero and max_tokens == 0:
        return 0
    if max_tokens < 1:
        raise bad_request(f"{field} must be >= 1, got {max_tokens}", param=field)
    if max_tokens > room:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, "
            f"{max_tokens} for the completion; {field}={max_tokens}). Please reduce {field}.",
            param=field,
            code="context_length_exceeded",
        )
    return max_tokens


def validate_openai(gw: Gateway, req: SamplingExtras) -> None:
    """The checks that need no tokenizer: run them before any work is done."""
    check_n(gw, req.n, req.best_of)
    check_stop(gw, req.stop)
    check_logprobs(req.prompt_logprobs, "prompt_logprobs")
    if req.stream and req.best_of is not None and req.best_of > req.n:
        raise bad_request("best_of > n is not supported when streaming", param="best_of")
    if isinstance(req, CompletionRequest):
        check_logprobs(req.logprobs, "logprobs")
    if isinstance(req, ChatCompletionRequest):
        check_logprobs(req.top_logprobs, "top_logprobs")
        if req.top_logprobs and not req.logprobs:
            raise bad_request("top_logprobs requires logprobs=true", param="top_logprobs")


def _common(req: SamplingExtras) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "n": req.n,
        "best_of": req.best_of,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "seed": req.seed,
        "stop": req.stop,
        "stop_token_ids": req.stop_token_ids,
        "ignore_eos": req.ignore_eos,
        "min_tokens": req.min_tokens,
        "skip_special_tokens": req.skip_special_tokens,
        "include_stop_str_in_output": req.include_stop_str_in_output,
        "prompt_logprobs": req.prompt_logprobs,
        "output_kind": "delta",
    }
    optional = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": -1 if req.top_k == 0 else req.top_k,  # vLLM: 0 also means no top-k
        "min_p": req.min_p,
        "repetition_penalty": req.repetition_penalty,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    kwargs.update(logit_controls(req))
    structured = openai_structured(req)
    if structured is not None:
        kwargs["structured_outputs"] = structured[1]
    return kwargs


def completion_params(req: CompletionRequest, max_tokens: int) -> Any:
    """max_tokens 0 (echo only) runs one step for the prompt's logprobs; the route drops the
    sampled token, as vLLM does."""
    if req.use_beam_search:
        return beam_params(req, max_tokens)
    kwargs = _common(req)
    kwargs["max_tokens"] = max(max_tokens, 1)
    if max_tokens == 0:
        kwargs["min_tokens"] = 0
        kwargs["n"], kwargs["best_of"] = 1, None
    kwargs["logprobs"] = req.logprobs
    if req.echo and req.logprobs is not None:
        kwargs["prompt_logprobs"] = max(req.logprobs, req.prompt_logprobs or 0)
    return make_params(**kwargs)


def chat_params(req: ChatCompletionRequest, max_tokens: int) -> Any:
    if req.use_beam_search:
        return beam_params(req, max_tokens)
    kwargs = _common(req)
    kwargs["max_tokens"] = max_tokens
    kwargs["logprobs"] = (req.top_logprobs or 0) if req.logprobs else None
    return make_params(**kwargs)


def validate_tgi(gw: Gateway, p: GenerateParameters) -> None:
    """TGI's limits, as /info advertises them (max_best_of, max_stop_sequences)."""
    if p.best_of is not None and not 1 <= p.best_of <= TGI_MAX_BEST_OF:
        raise bad_request(
            f"best_of must be in [1, {TGI_MAX_BEST_OF}], got {p.best_of}", param="best_of"
        )
    if p.best_of is not None and p.best_of > 1 and p.seed is not None:
        raise bad_request("seed must not be set when best_of > 1", param="seed")
    check_stop(gw, p.stop)
    if p.max_new_tokens is not None and p.max_new_tokens < 1:
        raise bad_request(f"max_new_tokens must be >= 1, got {p.max_new_tokens}", "max_new_tokens")


TGI_MAX_BEST_OF = 8


def tgi_params(p: GenerateParameters, max_new_tokens: int, seed: int | None) -> Any:
    """TGI semantics: always report the sampled token's logprob (TGI tokens carry it).

    best_of runs as that many requests, each with its own seed (the route picks the best and
    reports the others as `best_of_sequences`); `seed` is the one the route chose when
    sampling without one, so that it can be reported.
    """
    if p.temperature is not None and p.temperature <= 0:
        raise bad_request(
            f"temperature must be strictly positive, got {p.temperature}", param="temperature"
        )
    if p.top_p is not None and not 0 < p.top_p <= 1:
        raise bad_request(f"top_p must be in (0, 1], got {p.top_p}", param="top_p")
    if p.top_k is not None and p.top_k <= 0:
        raise bad_request(f"top_k must be strictly positive, got {p.top_k}", param="top_k")
    check_logprobs(p.top_n_tokens, "top_n_tokens")
    sampling = p.do_sample or any(v is not None for v in (p.temperature, p.top_k, p.top_p))
    kwargs: dict[str, Any] = {
        "n": 1,
        "temperature": (p.temperature if p.temperature is not None else 1.0) if sampling else 0.0,
        "top_p": p.top_p if p.top_p is not None else 1.0,
        "top_k": p.top_k if p.top_k is not None else -1,
        "repetition_penalty": p.repetition_penalty or 1.0,
        "frequency_penalty": p.frequency_penalty or 0.0,
        "seed": seed,
        "stop": p.stop,
        "max_tokens": max_new_tokens,
        "logprobs": p.top_n_tokens or 0,
        "prompt_logprobs": 0 if p.decoder_input_details else None,
        "output_kind": "delta",
    }
    if p.grammar is not None:
        kwargs["structured_outputs"] = tgi_structured(p.grammar)
    if (p.best_of or 1) > 1 and not sampling:
        raise bad_request("best_of > 1 requires sampling (do_sample=true)", param="best_of")
    return make_params(**kwargs)


def precompile(gw: Gateway, params: list[Any], param: str) -> None:
    """Compile the requests' grammars now (off the event loop), so a bad one is a 400
    naming `param`; the engine's grammar cache then has them."""
    from leaflm.gateway.structured import compile_or_400

    for sp in params:
        spec = getattr(sp, "structured_outputs", None)
        if spec is not None:
            compile_or_400(gw, spec, param)


def openai_finish_reason(reason: str | None) -> str | None:
    """OpenAI knows only stop and length; an engine abort reads as stop."""
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


def tgi_finish_reason(reason: str | None, stop_reason: int | str | None) -> str:
    if reason == "length":
        return "length"
    if isinstance(stop_reason, str):
        return "stop_sequence"
    return "eos_token"
