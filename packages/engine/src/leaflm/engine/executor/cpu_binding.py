"""Which CPU cores each tensor-parallel rank's OpenMP threads run on.

Ranks that share cores fight over them (and over their caches), so each rank gets a disjoint
set: by default the visible cores (`os.sched_getaffinity`) split evenly, in order, so on a
2-socket server TP=2 puts one rank per socket when cores are numbered socket by socket.
`LEAFLM_CPU_OMP_THREADS_BIND` overrides it, as vLLM's `VLLM_CPU_OMP_THREADS_BIND`:
`"0-31|32-63"` (one `|`-separated core list per rank) or `"all"` (no binding).
"""

from __future__ import annotations

import os

ENV = "LEAFLM_CPU_OMP_THREADS_BIND"


def parse_cores(spec: str) -> list[int]:
    """`"0-3,8"` -> [0, 1, 2, 3, 8]."""
    cores: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            cores.extend(range(int(lo), int(hi) + 1))
        elif part:
            cores.append(int(part))
    return cores


def rank_cores(world_size: int) -> list[list[int] | None]:
    """Per rank, its cores (None: leave the rank unbound)."""
    spec = os.environ.get(ENV)
    if spec == "all":
        return [None] * world_size
    if spec:
        lists = [parse_cores(s) for s in spec.split("|")]
        if len(lists) != world_size or not all(lists):
            raise ValueError(
                f"{ENV}={spec!r} must list one non-empty core set per rank "
                f"({world_size} ranks), separated by '|'"
            )
        return lists  # type: ignore[return-value]
    visible = sorted(os.sched_getaffinity(0))
    if len(visible) < world_size:  # fewer cores than ranks: one core each, shared
        return [[visible[r % len(visible)]] for r in range(world_size)]
    per = len(visible) // world_size
    return [visible[r * per : (r + 1) * per] for r in range(world_size)]


def bind_this_process(cores: list[int] | None) -> None:
    """Pin this process (and the OpenMP threads it starts) to `cores`, one thread per core."""
    if cores is None:
        return
    import torch

    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
