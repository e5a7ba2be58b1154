"""Executors: how the driver runs the model on one or more tensor-parallel workers.

`make_executor` picks the backend as vLLM does: `uni` for `tensor_parallel_size=1`, `ray`
when TP > 1 and a Ray cluster is connected (`ray.is_initialized()`), else `mp`; an explicit
`distributed_executor_backend` wins.
"""

from __future__ import annotations

import sys

from leaflm.engine.config import EngineArgs, ModelConfig
from leaflm.engine.executor.base import Executor, WorkerFailedError

BACKENDS = ("uni", "mp", "ray")


def resolve_backend(args: EngineArgs) -> str:
    if args.distributed_executor_backend is not None:
        return args.distributed_executor_backend
    if args.tensor_parallel_size == 1:
        return "uni"
    ray = sys.modules.get("ray")  # not imported means not initialized
    if ray is not None and ray.is_initialized():
        return "ray"
    return "mp"


def make_executor(args: EngineArgs, model_config: ModelConfig) -> Executor:
    backend = resolve_backend(args)
    tp = args.tensor_parallel_size
    if backend == "uni":
        if tp != 1:
            raise ValueError(
                f"distributed_executor_backend='uni' runs one rank in-process, but "
                f"tensor_parallel_size={tp}; use 'mp' or 'ray'"
            )
        from leaflm.engine.executor.uni import UniExecutor

        return UniExecutor(model_config)
    if backend == "mp":
        from leaflm.engine.executor.mp import MultiprocExecutor

        return MultiprocExecutor(model_config, tp)
    from leaflm.engine.executor.ray import RayExecutor

    return RayExecutor(model_config, tp)


__all__ = ["BACKENDS", "Executor", "WorkerFailedError", "make_executor", "resolve_backend"]
