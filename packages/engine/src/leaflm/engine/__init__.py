"""leaflm engine: paged KV cache, continuous batching, model runner and the vLLM-style API."""

import os

# OpenMP threads that spin while waiting (the default) collapse throughput when the CPU is
# shared: on a busy 2-core machine, decode steps measured ~20x slower than with passive
# waiting. Only a default, and only effective when this import comes before torch's.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from leaflm.engine.async_llm import AsyncLLM
from leaflm.engine.config import EngineArgs
from leaflm.engine.engine import LLMEngine
from leaflm.engine.llm import LLM
from leaflm.engine.outputs import (
    CompletionOutput,
    EngineStats,
    Logprob,
    RequestMetrics,
    RequestOutput,
)
from leaflm.engine.sampling_params import SamplingParams

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "AsyncLLM",
    "CompletionOutput",
    "EngineArgs",
    "EngineStats",
    "LLMEngine",
    "Logprob",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "__version__",
]
