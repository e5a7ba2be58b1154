"""Operational routes: /health, /metrics, /version, /v1/models, /tokenize, /detokenize."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from leaflm.gateway import __version__
from leaflm.gateway.errors import APIError, bad_request
from leaflm.gateway.generation import tokenize_prompt
from leaflm.gateway.limits import check_prompt_size
from leaflm.gateway.openapi import ops_responses
from leaflm.gateway.routes.chat import render_chat
from leaflm.gateway.schemas.openai import ModelCard, ModelList
from leaflm.gateway.schemas.ops import (
    DetokenizeRequest,
    DetokenizeResponse,
    HealthResponse,
    TokenizeRequest,
    TokenizeResponse,
    VersionResponse,
)
from leaflm.gateway.state import Gateway, gateway_of

router = APIRouter()


_HEALTH = {
    "response_model": HealthResponse,
    "responses": {503: {"model": HealthResponse, "description": "Loading or shutting down"}},
}


@router.get("/health", **_HEALTH)  # type: ignore[arg-type]
@router.head("/health", operation_id="health_head", **_HEALTH)  # type: ignore[arg-type]
async def health(request: Request) -> Response:
    """200 when the engine can take requests, 503 while loading or shutting down."""
    gw = gateway_of(request)
    try:
        gw.admission.check_ready()
        if getattr(gw.engine, "errored", False):
            raise APIError(503, "The engine has failed (see the server log).", retry_after=1)
    except APIError as err:
        return JSONResponse(
            {"status": "unavailable", "message": err.message},
            status_code=503,
            headers={"Retry-After": str(err.retry_after)},
        )
    return JSONResponse({"status": "ok"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    return Response(gateway_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/version", response_model=VersionResponse)
async def version() -> dict:
    try:
        from leaflm.engine import __version__ as engine_version
    except ImportError:  # the gateway may be installed against a foreign engine object
        engine_version = None
    return {"version": __version__, "engine_version": engine_version}


@router.get("/v1/models", response_model=ModelList, responses=ops_responses(401, 503))
async def models(request: Request) -> dict:
    gw = gateway_of(request)
    gw.admission.check_ready()
    card = {
        "id": gw.model_name,
        "object": "model",
        "created": 0,
        "owned_by": "leaflm",
        "root": str(getattr(gw.engine.model_config, "model", gw.model_name)),
        "max_model_len": gw.max_model_len,
    }
    return {"object": "list", "data": [card]}


@router.get(
    "/v1/models/{model_id:path}", response_model=ModelCard, responses=ops_responses(401, 404, 503)
)
async def model(model_id: str, request: Request) -> dict:
    listing = await models(request)
    gateway_of(request).check_model(model_id)
    return listing["data"][0]


def _token_ids(gw: Gateway, body: TokenizeRequest) -> list[int]:
    if body.messages is not None:
        return render_chat(gw, body.messages, body.add_generation_prompt).token_ids
    assert body.prompt is not None
    check_prompt_size(gw, body.prompt)  # more than the context holds is a 400, not 8M ids
    if body.add_special_tokens:
        return tokenize_prompt(gw, body.prompt).token_ids if body.prompt else []
    return list(gw.tokenizer.encode(body.prompt, add_special_tokens=False))


@router.post(
    "/tokenize", response_model=TokenizeResponse, responses=ops_responses(400, 401, 404, 413, 503)
)
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    gw = gateway_of(request)
    gw.admission.check_ready()
    gw.check_model(body.model)
    if len({"prompt", "messages"} & body.model_fields_set) != 1:
        raise bad_request("send exactly one of prompt or messages")
    ids = await run_in_threadpool(_token_ids, gw, body)
    return {"tokens": ids, "count": len(ids), "max_model_len": gw.max_model_len}


@router.post(
    "/detokenize",
    response_model=DetokenizeResponse,
    responses=ops_responses(400, 401, 404, 413, 503),
)
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    gw = gateway_of(request)
    gw.admission.check_ready()
    gw.check_model(body.model)
    vocab = len(gw.tokenizer)
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"tokens outside the vocabulary [0, {vocab}): {bad[:5]}", param="tokens")
    return {"prompt": await run_in_threadpool(gw.tokenizer.decode, body.tokens)}
