"""A worker: one tensor-parallel rank, its process group, model shard, KV-cache shard, runner.

Built in the process (or Ray actor) that runs the rank. `init_device` joins the
`torch.distributed` group (gloo on CPU, NCCL on CUDA) at the driver-chosen address and pins
the rank's threads; `load_model` builds only this rank's shard of the model (its heads, its
columns of the MLP, its vocabulary rows), so its KV cache holds only its KV heads.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from typing import Any

import torch

from leaflm.engine.config import ModelConfig
from leaflm.engine.executor.cpu_binding import bind_this_process
from leaflm.engine.parallel_state import set_tensor_parallel
from leaflm.engine.step_input import StepInput

# A collective that waits longer than this has lost a peer; the driver notices sooner.
GROUP_TIMEOUT = datetime.timedelta(minutes=5)


class Worker:
    def __init__(
        self,
        model_config: ModelConfig,
        rank: int,
        world_size: int,
        init_method: str,
        device: torch.device,
        cores: list[int] | None,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.init_method = init_method
        self.config = dataclasses.replace(model_config, device=device)
        self.cores = cores
        self.runner: Any = None
        self.steps, self.step_seconds = 0, 0.0
        from leaflm.engine.parallel_state import COMM

        COMM.update(seconds=0.0, calls=0)

    def init_device(self) -> int:
        import torch.distributed as dist

        device = self.config.device
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            bind_this_process(self.cores)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            init_method=self.init_method,
            rank=self.rank,
            world_size=self.world_size,
            timeout=GROUP_TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
        shm = None
        if device.type == "cpu" and os.environ.get("LEAFLM_TP_SHM", "1") != "0":
            from leaflm.engine.shm_all_reduce import connect

            shm = connect(self.rank, self.world_size, dist.group.WORLD)
        self.shm = shm
        set_tensor_parallel(self.rank, self.world_size, dist.group.WORLD, shm)
        return os.getpid()

    def load_model(self) -> None:
        from leaflm.engine.model_runner import ModelRunner

        self.runner = ModelRunner(self.config)

    def execute_step(self, step: StepInput) -> torch.Tensor | None:
        start = time.perf_counter()
        logits = self.runner.execute_step(step)
        out = logits.cpu() if self.rank == 0 else None
        self.step_seconds += time.perf_counter() - start
        self.steps += 1
        return out

    def step_stats(self) -> dict[str, float]:
        """Steps run, seconds in them, and the part spent in collectives (benchmarks)."""
        from leaflm.engine.parallel_state import COMM

        return {
            "steps": self.steps,
            "step_s": self.step_seconds,
            "comm_s": COMM["seconds"],
            "comm_calls": COMM["calls"],
        }

    def cpu_binding(self) -> tuple[list[int], int]:
        """(cores this process may run on, torch's intra-op threads)."""
        return sorted(os.sched_getaffinity(0)), torch.get_num_threads()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def call(self, method: str, args: tuple[Any, ...]) -> Any:
        """A worker method, else the runner's (attribute or method)."""
        if hasattr(type(self), method):
            return getattr(self, method)(*args)
        attr = getattr(self.runner, method)
        return attr(*args) if callable(attr) else attr

    def close(self) -> None:
        import torch.distributed as dist

        shm = getattr(self, "shm", None)
        if shm is not None:
            set_tensor_parallel(0, 1)
            shm.close()
            self.shm = None
        if dist.is_initialized():
            dist.destroy_process_group()
