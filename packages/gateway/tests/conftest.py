"""Gateway test fixtures: one real AsyncLLM over a tiny random LLaMA, served by uvicorn on
127.0.0.1 in a background thread for the whole session (helpers in this folder are
importable; pytest runs in importlib mode)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway_testenv import API_KEY, MODEL_NAME


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from leaflm.engine.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("gateway-tiny-llama"), "llama")


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    import asyncio

    from leaflm.engine import AsyncLLM

    llm = AsyncLLM(str(tiny_model_dir), kv_cache_memory="16MiB", max_model_len=256, seed=0)
    yield llm
    asyncio.run(llm.shutdown())


@pytest.fixture(scope="session")
def server(engine):
    from leaflm.gateway.server import ServerThread
    from leaflm.gateway.settings import GatewaySettings

    settings = GatewaySettings(api_key=API_KEY, served_model_name=MODEL_NAME)
    with ServerThread(engine, settings) as srv:
        yield srv


@pytest.fixture(scope="session")
def openai_client(server):
    from openai import OpenAI

    with OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as client:
        yield client


@pytest.fixture()
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}
