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
