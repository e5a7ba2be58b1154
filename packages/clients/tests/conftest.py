"""Client test fixtures: a real leaflm server (AsyncLLM on a tiny random LLaMA, uvicorn on
127.0.0.1 in a thread) for the session, plus a second one with max_queue=1 for retries."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from client_testenv import API_KEY, MODEL_NAME


@pytest.fixture(scope="session")
def client_engine(tmp_path_factory):
    from leaflm.engine import AsyncLLM
    from leaflm.engine.testing import build_tiny_model

    model_dir: Path = build_tiny_model(tmp_path_factory.mktemp("client-tiny-llama"), "llama")
    llm = AsyncLLM(str(model_dir), kv_cache_memory="8MiB", max_model_len=256)
    yield llm
    asyncio.run(llm.shutdown())


@pytest.fixture(scope="session")
def server(client_engine):
    from leaflm.gateway.server import ServerThread
    from leaflm.gateway.settings import GatewaySettings

    settings = GatewaySettings(api_key=API_KEY, served_model_name=MODEL_NAME)
    with ServerThread(client_engine, settings) as srv:
        yield srv


@pytest.fixture(scope="session")
def busy_server(client_engine):
    """Admits one generation request at a time; the next gets 429 with Retry-After: 1."""
    from leaflm.gateway.server import ServerThread
    from leaflm.gateway.settings import GatewaySettings

    settings = GatewaySettings(served_model_name=MODEL_NAME, max_queue=1, retry_after_s=1)
    with ServerThread(client_engine, settings) as srv:
        yield srv
