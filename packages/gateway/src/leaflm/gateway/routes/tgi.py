"""TGI's surface: POST /generate, POST /generate_stream, POST / (either), GET /info.

Each streamed event carries one token (`id`, `text`, `logprob`, `special`); the last one
also carries `generated_text` and `details` with TGI's finish reasons
(`length | eos_token | stop_sequence`).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from leaflm.gateway import __version__
from leaflm.gateway.errors import bad_request
from leaflm.gateway.generation import Completion, Prompt, PromptResult, collect, new_id, run
from leaflm.gateway.generation import tokenize_prompt as _tokenize
from leaflm.gateway.limits import MAX_LOGPROBS, check_prompt_size
from leaflm.gateway.logprobs import chosen_logprob, token_text
from leaflm.gateway.openapi import tgi_responses
from leaflm.gateway.routes.common import first_or_400, serve_generation
from leaflm.gateway.sampling import (
    TGI_MAX_BEST_OF,
    check_max_tokens,
    precompile,
    tgi_finish_reason,
    tgi_params,
    validate_tgi,
)
from leaflm.gateway.schemas.tgi import (
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    Info,
    StreamResponse,
)
from leaflm.gateway.state import Gateway, gateway_of
from leaflm.gateway.streams import close_quietly, sse

router = APIRouter()


def _special_ids(gw: Gateway) -> set[int]:
    return set(getattr(gw.tokenizer, "all_special_ids", []) or [])


def _token(gw: Gateway, tid: int, pos: dict[int, Any] | None, text: str | None = None) -> dict:
    lp = pos.get(tid) if pos else None
    return {
        "id": tid,
        "text": text if text is not None else token_text(gw.tokenizer, tid, lp),
        "logprob": chosen_logprob(pos, tid) or 0.0,
        "special": tid in _special_ids(gw),
    }


def _top_tokens(gw: Gateway, pos: dict[int, Any] | None, k: int) -> list[dict]:
    if not pos or not k:
        return []
    ranked = sorted(
        ((t, lp) for t, lp in pos.items() if lp.rank is not None and lp.rank <= k),
        key=lambda kv: kv[1].rank,
    )
    return [_token(gw, t, pos) for t, _ in ranked]


def _prefill(gw: Gateway, r: PromptResult) -> list[dict]:
    positions = r.prompt_logprobs or [None] * len(r.prompt.token_ids)
    return [
        {
            "id": t,
            "text": gw.tokenizer.decode([t]),
            "logprob": chosen_logprob(pos, t),
        }
        for t, pos in zip(r.prompt.token_ids, positions, strict=False)
    ]


def _details(
    gw: Gateway, p: GenerateParameters, r: PromptResult, c: Completion, seed: int | None
) -> dict:
    positions = c.logprobs or [None] * len(c.token_ids)
    return {
        "finish_reason": tgi_finish_reason(c.finish_reason, c.stop_reason),
        "generated_tokens": len(c.token_ids),
        "seed": seed,
        "prefill": _prefill(gw, r) if p.decoder_input_details else [],
        "tokens": [_token(gw, t, pos) for t, pos in zip(c.token_ids, positions, strict=False)],
        "top_tokens": (
            [_top_tokens(gw, pos, p.top_n_tokens) for pos in positions] if p.top_n_tokens else None
        ),
    }


def _sampling(p: GenerateParameters) -> bool:
    return p.do_sample or any(v is not None for v in (p.temperature, p.top_k, p.top_p))


async def _prepare(
    gw: Gateway, body: GenerateRequest
) -> tuple[Prompt, GenerateParameters, list[Any], list[int | None]]:
    """(prompt, parameters, SamplingParams and seed per candidate): seeds are chosen here
    when sampling without one, so the response can report each as TGI does."""
    p = body.parameters or GenerateParameters()
    validate_tgi(gw, p)
    check_prompt_size(gw, body.inputs, param="inputs")
    prompt = await run_in_threadpool(_tokenize, gw, body.inputs, "inputs")
    if p.truncate is not None and p.truncate > 0 and len(prompt.token_ids) > p.truncate:
        ids = prompt.token_ids[-p.truncate :]
        prompt = Prompt(gw.tokenizer.decode(ids), ids)
    requested = p.max_new_tokens
    if requested is None:
        room = gw.max_model_len - len(prompt.token_ids)
        requested = min(gw.settings.tgi_default_max_new_tokens, max(room, 1))
    max_new = check_max_tokens(requested, len(prompt.token_ids), gw.max_model_len, "max_new_tokens")
    seeds: list[int | None] = [p.seed]
    if p.seed is None and _sampling(p):
        seeds = [secrets.randbits(63) for _ in range(max(p.best_of or 1, 1))]
    params = [tgi_params(p, max_new, s) for s in seeds]
    await run_in_threadpool(precompile, gw, params, "grammar")
    return prompt, p, params, seeds


async def _generate(gw: Gateway, body: GenerateRequest) -> dict:
    prompt, p, params, seeds = await _prepare(gw, body)
    results = await collect(gw, [prompt] * len(params), params, new_id("tgi"))
    # best_of: candidates by total logprob, as TGI picks them; the others are reported.
    ranked = sorted(
        ((r, r.ordered()[0], seed) for r, seed in zip(results, seeds, strict=True)),
        key=lambda rcs: -(rcs[1].cumulative_logprob or 0.0),
    )
    (r, best, seed), others = ranked[0], ranked[1:]
    prefix = prompt.text if p.return_full_text else ""
    details = _details(gw, p, r, best, seed) if p.details else None
    if details is not None and len(ranked) > 1:
        details["best_of_sequences"] = [
            {"generated_text": prefix + c.text, **_details(gw, p, rr, c, s)} for rr, c, s in others
        ]
    return {"generated_text": prefix + best.text, "details": details}


async def _events(
    gw: Gateway, prompt: Prompt, p: GenerateParameters, seed: int | None,
    outputs: AsyncIterator[tuple[int, Any]],
) -> AsyncIterator[str]:  # fmt: skip
    result = PromptResult(prompt)
    index = 0
    try:
        async for _, out in outputs:
            result.add(out)
            for c in out.outputs:
                ids, positions = list(c.token_ids), list(c.logprobs or [None] * len(c.token_ids))
                for k, (tid, pos) in enumerate(zip(ids, positions, strict=False)):
                    last_of_delta = k == len(ids) - 1
                    # The delta's text belongs to its last token, so texts concatenate exactly.
                    event: dict[str, Any] = {
                        "index": index,
                        "token": _token(gw, tid, pos, c.text if last_of_delta else ""),
                        "top_tokens": _top_tokens(gw, pos, p.top_n_tokens or 0) or None,
                        "generated_text": None,
                        "details": None,
                    }
                    index += 1
                    if last_of_delta and c.finish_reason is not None:
                        full = result.completions[c.index]
                        prefix = prompt.text if p.return_full_text else ""
                        event["generated_text"] = prefix + full.text
                        event["details"] = {
                            "finish_reason": tgi_finish_reason(c.finish_reason, c.stop_reason),
                            "generated_tokens": len(full.token_ids),
                            "seed": seed,
                            "input_length": len(prompt.token_ids),
                        }
                    yield sse(event)
    finally:
        await close_quietly(outputs)


async def _stream(gw: Gateway, body: GenerateRequest) -> tuple[AsyncIterator[str], None]:
    best_of = body.parameters.best_of if body.parameters else None
    if best_of is not None and best_of > 1:
        raise bad_request("best_of > 1 is not supported when streaming tokens", param="best_of")
    prompt, p, params, seeds = await _prepare(gw, body)
    outputs = await first_or_400(run(gw, [prompt], params, new_id("tgi")))
    return _events(gw, prompt, p, seeds[0], outputs), None


async def _generate_list(gw: Gateway, body: GenerateRequest) -> list[dict]:
    return [await _generate(gw, body)]


_STREAM_EVENTS = "one `StreamResponse` per token; the last carries generated_text and details"


@router.post(
    "/generate", response_model=GenerateResponse, responses=tgi_responses(GenerateResponse)
)
async def generate(body: GenerateRequest, request: Request) -> Response:
    return await serve_generation(request, None, lambda gw: _generate(gw, body))


@router.post(
    "/generate_stream",
    response_model=StreamResponse,
    responses=tgi_responses(StreamResponse, _STREAM_EVENTS),
)
async def generate_stream(body: GenerateRequest, request: Request) -> Response:
    return await serve_generation(request, None, lambda gw: _stream(gw, body))


@router.post(
    "/",
    response_model=list[GenerateResponse],
    responses=tgi_responses(list[GenerateResponse], _STREAM_EVENTS + " (with `stream: true`)"),
)
async def compat_generate(body: GenerateRequest, request: Request) -> Response:
    """TGI's compat route: a one-element list, or with `stream: true` the token events."""
    if body.stream:
        return await serve_generation(request, None, lambda gw: _stream(gw, body))
    return await serve_generation(request, None, lambda gw: _generate_list(gw, body))


@router.get("/info", response_model=Info, responses=tgi_responses(Info))
async def info(request: Request) -> dict:
    gw = gateway_of(request)
    gw.admission.check_ready()
    config = gw.engine.model_config
    dtype = str(getattr(config, "dtype", "float32")).replace("torch.", "")
    device = str(getattr(config, "device", "cpu"))
    return {
        "model_id": gw.model_name,
        "model_sha": None,
        "model_dtype": dtype,
        "model_device_type": device.split(":")[0],
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": gw.settings.max_queue or 128,
        "max_best_of": TGI_MAX_BEST_OF,
        "max_stop_sequences": gw.settings.max_stop_sequences,
        "max_input_tokens": gw.max_model_len - 1,
        "max_total_tokens": gw.max_model_len,
        "max_top_n_tokens": MAX_LOGPROBS,
        "validation_workers": 1,
        "max_client_batch_size": 1,
        "router": "leaflm",
        "version": __version__,
        "sha": None,
        "docker_label": None,
    }
