"""leaflm engine: paged KV cache, continuous batching, model runner and the vLLM-style API."""

import os

# How OpenMP's idle threads wait between parallel regions. libgomp's default (spin ~300k
# times) collapses throughput when the CPU is shared: decode steps on a busy 2-core machine
# ran ~20x slower. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) makes every GEMM of a decode step
# wake its worker again. A short spin sits between: on the 2-core dev machine it measured
# ~4% faster decode steps than passive waiting when quiet, and the same beside a busy process.
# Only a default (an OMP_WAIT_POLICY or GOMP_SPINCOUNT of the caller wins), and only effective
# when this import comes before torch's.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import importlib
from typing import TYPE_CHECKING, Any

# The public names load on first use (PEP 562), so `leaflm --help` or `leaflm serve` refusing a
# busy port answers before torch is imported (about a second on a small machine).
_EXPORTS = {
    "AsyncLLM": "leaflm.engine.async_llm",
    "EngineArgs": "leaflm.engine.config",
    "LLMEngine": "leaflm.engine.engine",
    "LLM": "leaflm.engine.llm",
    "CompletionOutput": "leaflm.engine.outputs",
    "EngineStats": "leaflm.engine.outputs",
    "Logprob": "leaflm.engine.outputs",
    "RequestMetrics": "leaflm.engine.outputs",
    "RequestOutput": "leaflm.engine.outputs",
    "SamplingParams": "leaflm.engine.sampling_params",
    "BeamSearchOutput": "leaflm.engine.beam_search",
    "BeamSearchParams": "leaflm.engine.beam_search",
    "BeamSearchSequence": "leaflm.engine.beam_search",
    "StructuredOutputsParams": "leaflm.engine.structured_outputs",
}

if TYPE_CHECKING:
    from leaflm.engine.async_llm import AsyncLLM
    from leaflm.engine.beam_search import BeamSearchOutput, BeamSearchParams, BeamSearchSequence
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
    from leaflm.engine.structured_outputs import StructuredOutputsParams


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'leaflm.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__version__ = "0.1.0"

__all__ = [
    "LLM",
    "AsyncLLM",
    "BeamSearchOutput",
    "BeamSearchParams",
    "BeamSearchSequence",
    "CompletionOutput",
    "EngineArgs",
    "EngineStats",
    "LLMEngine",
    "Logprob",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "StructuredOutputsParams",
    "__version__",
]
