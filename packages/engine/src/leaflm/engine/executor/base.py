"""The executor interface: how the driver (the one `LLMEngine`) reaches its model workers.

The scheduler, block manager, sampler and output processing run once, in the driver. An
executor owns the workers (one per tensor-parallel rank) and offers three things:
`collective_rpc` (call one method on every worker, e.g. to size or allocate the KV cache),
`execute_model` (one step: the laid-out batch goes to every rank in one message, rank 0's
logits rows come back) and `shutdown`. Backends: `uni` (in-process), `mp` (one process per
rank on this node), `ray` (one Ray actor per rank, possibly on several nodes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from leaflm.engine.scheduler import SchedulerOutput


class WorkerFailedError(RuntimeError):
    """A worker died or raised; the executor has shut every worker down."""


class Executor(ABC):
    # Where the driver's sampler runs: the logits `execute_model` returns live there.
    driver_device: torch.device = torch.device("cpu")
    failed: BaseException | None = None  # set once a worker failed; the executor is then dead
    block_size = 16  # the KV block size the driver lays each step's batch out for

    @abstractmethod
    def collective_rpc(self, method: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Call `method(*args)` on every worker; their results in rank order."""

    @abstractmethod
    def execute_model(
        self, sched: SchedulerOutput, logit_rows: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Run one step on every rank; logits `[len(logit_rows), V]` from rank 0."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop every worker (idempotent)."""

    # -- what the engine asks of the model, answered by the workers -------------------------
    def kv_shape(self) -> tuple[int, int, int]:
        """(num_layers, KV heads per rank, head_dim): one rank's cache shape."""
        return tuple(self.collective_rpc("kv_shape")[0])  # type: ignore[return-value]

    def profile_peak_memory(self, num_tokens: int, block_size: int) -> int:
        return max(self.collective_rpc("profile_peak_memory", (num_tokens, block_size)))

    def init_kv_cache(
        self, num_blocks: int, block_size: int, num_cpu_blocks: int, num_prefault_blocks: int = 0
    ) -> None:
        self.block_size = block_size
        args = (num_blocks, block_size, num_cpu_blocks, num_prefault_blocks)
        self.collective_rpc("init_kv_cache", args)

    @property
    def vocab_size(self) -> int:
        if not hasattr(self, "_vocab_size"):
            self._vocab_size = int(self.collective_rpc("vocab_size")[0])
        return self._vocab_size

    def check_alive(self) -> None:
        if self.failed is not None:
            raise WorkerFailedError(f"the engine's workers are gone: {self.failed}")
