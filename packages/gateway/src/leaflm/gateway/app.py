"""The app factory: one FastAPI app around one engine (anything shaped like AsyncLLM)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from leaflm.gateway import __version__
from leaflm.gateway.admission import PUBLIC_PATHS, APIKeyMiddleware
from leaflm.gateway.body_limit import BodyLimitMiddleware
from leaflm.gateway.errors import install_handlers
from leaflm.gateway.openapi import install_openapi
from leaflm.gateway.routes import chat, completions, ops, tgi
from leaflm.gateway.settings import GatewaySettings
from leaflm.gateway.state import Gateway

logger = logging.getLogger("leaflm.gateway")


def create_app(engine: Any | None, settings: GatewaySettings | None = None) -> FastAPI:
    """Build the HTTP app.

    Args:
        engine: an `AsyncLLM` (or any object with its interface: generate, abort, stats,
            get_tokenizer, model_config, shutdown). None serves 503s until
            `app.state.gateway.attach(engine)` is called.
        settings: API key, served model name, queue limit; defaults when None.

    Returns:
        The FastAPI app; run it with uvicorn.
    """
    settings = settings or GatewaySettings()
    gateway = Gateway(engine, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        gateway.admission.draining = True
        if settings.shutdown_engine and gateway.engine is not None:
            await gateway.engine.shutdown()

    app = FastAPI(title="leaflm", version=__version__, lifespan=lifespan)
    app.state.gateway = gateway
    install_handlers(app)
    # Middleware added last runs first: CORS (answers preflights), then the API key, then the
    # body limit, so an unauthenticated caller's body is never read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    if settings.allowed_origins is not None:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=settings.allowed_methods,
            allow_headers=settings.allowed_headers,
            allow_credentials=settings.allow_credentials,
        )
    for module in (completions, chat, tgi, ops):
        app.include_router(module.router)
    install_openapi(app, gateway, PUBLIC_PATHS)
    return app
