"""Shared fixtures: tiny random models (built once per session) and a block-leak check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leaflm.engine.testing import build_tiny_model

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """`tiny_models(arch, **config_overrides)` -> directory of a tiny random model (cached)."""
    cache: dict[str, Path] = {}

    def get(arch: str = "llama", **overrides) -> Path:
        key = arch + repr(sorted(overrides.items()))
        if key not in cache:
            cache[key] = build_tiny_model(tmp_path_factory.mktemp(arch), arch=arch, **overrides)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def llama_dir(tiny_models) -> Path:
    return tiny_models("llama")


@pytest.fixture
def assert_no_leaks():
    """`assert_no_leaks(llm_or_async_llm)`: every KV block free, every queue empty."""

    def check(llm) -> None:
        engine = llm.llm_engine if hasattr(llm, "llm_engine") else llm.engine
        bm = engine.block_manager
        assert bm.all_free(), (bm.num_free_blocks, bm.num_blocks, bm.cpu_free)
        stats = engine.stats()
        assert stats.num_blocks_free == stats.num_blocks_total
        assert stats.num_running == stats.num_waiting == stats.num_swapped == 0
        assert not engine.requests

    return check
