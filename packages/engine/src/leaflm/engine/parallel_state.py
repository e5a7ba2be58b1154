"""This process's tensor-parallel rank, and the two collectives the parallel layers need.

A worker sets its rank and `torch.distributed` group once, before it builds its model shard;
layers read `tp_rank()` / `tp_size()` at construction. A process that never joins a group
(the `uni` executor, every test of a single-device engine) is rank 0 of 1, where both
collectives return their input untouched, so the TP=1 path costs nothing extra. Ranks on
one host run them through shared memory (`shm_all_reduce`), others through the group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TensorParallelState:
    rank: int = 0
    size: int = 1
    group: Any = None  # a torch.distributed ProcessGroup when size > 1
    shm: Any = None  # ShmCollectives when every rank is on this host (CPU), else None


_STATE = TensorParallelState()
# Time spent in this process's collectives (seconds, calls): what a step pays for TP.
COMM = {"seconds": 0.0, "calls": 0}


def set_tensor_parallel(rank: int, size: int, group: Any = None, shm: Any = None) -> None:
    global _STATE
    _STATE = TensorParallelState(rank, size, group, shm)


def tp_rank() -> int:
    return _STATE.rank


def tp_size() -> int:
    return _STATE.size


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the ranks, in place (after a row-parallel layer or vocab-parallel lookup)."""
    if _STATE.size == 1:
        return x
    start = time.perf_counter()
    if _STATE.shm is not None and _STATE.shm.fits(x):
        _STATE.shm.all_reduce(x)
    else:
        import torch.distributed as dist

        dist.all_reduce(x, group=_STATE.group)
    _count(start)
    return x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """The elementwise max of `x` over the ranks, in place (load time: quantization scales)."""
    if _STATE.size == 1:
        return x
    import torch.distributed as dist

    dist.all_reduce(x, op=dist.ReduceOp.MAX, group=_STATE.group)
    return x


def _count(start: float) -> None:
    COMM["seconds"] += time.perf_counter() - start
    COMM["calls"] += 1


def gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Rank 0 gets every rank's `x` concatenated along the last dim; others get `[..., 0]`."""
    if _STATE.size == 1:
        return x
    import torch.distributed as dist

    x = x.contiguous()
    start = time.perf_counter()
    if _STATE.shm is not None and _STATE.shm.fits(x):
        parts = _STATE.shm.gather_to_first(x)
        _count(start)
        return torch.cat(parts, dim=-1) if parts is not None else x[..., :0]
    if _STATE.rank == 0:
        parts = [torch.empty_like(x) for _ in range(_STATE.size)]
        dist.gather(x, parts, dst=0, group=_STATE.group)
        _count(start)
        return torch.cat(parts, dim=-1)
    dist.gather(x, None, dst=0, group=_STATE.group)
    _count(start)
    return x[..., :0]
