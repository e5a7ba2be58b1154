"""`ray`: one Ray actor per tensor-parallel rank, placed by a placement group (any node).

The driver reserves one bundle per rank (`{"GPU": 1}` on CUDA, `{"CPU": 1}` on CPU; strategy
`LEAFLM_RAY_PLACEMENT_STRATEGY`, default PACK: ranks fill a node before spilling to the
next), starts each rank's `Worker` in an actor on its bundle, and has rank 0's actor pick the
rendezvous address on its node (its IP, a port it just bound), so ranks may live on
different nodes. Per step the `StepInput` is put into the object store once and every
actor's `execute_step` reads that one object; the driver waits on all ranks and fails the
engine as soon as any rank's task fails or its actor dies. Actors are killed and the
placement group removed at shutdown, garbage collection or exit; Ray itself ends an
owner's actors when the driver process dies.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any

import torch

from leaflm.engine.config import ModelConfig
from leaflm.engine.executor.base import Executor, WorkerFailedError
from leaflm.engine.scheduler import SchedulerOutput
from leaflm.engine.step_input import build_step_input

STRATEGY_ENV = "LEAFLM_RAY_PLACEMENT_STRATEGY"


class RayWorkerWrapper:
    """The body of a rank's actor: builds the `Worker` once Ray has placed it."""

    def __init__(self) -> None:
        self.worker: Any = None

    def rendezvous_address(self) -> str:
        import ray

        from leaflm.engine.executor.mp import free_port

        ip = ray.util.get_node_ip_address()
        return f"tcp://{ip}:{free_port(ip)}"

    def bind(self, spec: tuple[Any, ...]) -> int:
        from leaflm.engine.executor.worker import Worker

        self.worker = Worker(*spec)
        return os.getpid()

    def call(self, method: str, args: tuple[Any, ...]) -> Any:
        return self.worker.call(method, args)

    def execute_step(self, step: Any) -> Any:
        return self.worker.execute_step(step)


def _stop(actors: list[Any], pg: Any) -> None:
    import ray

    if not ray.is_initialized():
        return
    for actor in actors:
        with contextlib.suppress(Exception):  # already dead or the cluster is gone
            ray.kill(actor)
    with contextlib.suppress(Exception):
        ray.util.remove_placement_group(pg)


class RayExecutor(Executor):
    def __init__(self, model_config: ModelConfig, world_size: int) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if not ray.is_initialized():
            ray.init()
        self.world_size = world_size
        cuda = model_config.device.type == "cuda"
        bundle = {"GPU": 1} if cuda else {"CPU": 1}
        strategy = os.environ.get(STRATEGY_ENV, "PACK")
        self.pg = placement_group([dict(bundle) for _ in range(world_size)], strategy=strategy)
        self.actors: list[Any] = []
        self._finalizer = weakref.finalize(self, _stop, self.actors, self.pg)
        try:
            ray.get(self.pg.ready(), timeout=120)
        except Exception as exc:
            self.shutdown()
            total = ray.cluster_resources()
            raise ValueError(
                f"tensor_parallel_size={world_size} needs {world_size} x {bundle} in the Ray "
                f"cluster, which has {total}"
            ) from exc
        actor_cls = ray.remote(num_cpus=0 if cuda else 1, num_gpus=1 if cuda else 0)(
            RayWorkerWrapper
        )
        for rank in range(world_size):
            strategy_r = PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=rank
            )
            self.actors.append(actor_cls.options(scheduling_strategy=strategy_r).remote())
        try:
            init_method = self._get([self.actors[0].rendezvous_address.remote()])[0]
            device = torch.device("cuda", 0) if cuda else torch.device("cpu")  # Ray's GPU
            specs = [
                (model_config, r, world_size, init_method, device, None) for r in range(world_size)
            ]
            self.pids = self._get(
                [a.bind.remote(s) for a, s in zip(self.actors, specs, strict=True)]
            )
            self.collective_rpc("init_device")
            self.collective_rpc("load_model")
        except WorkerFailedError as exc:
            cause = getattr(exc.__cause__, "cause", exc.__cause__)  # inside RayTaskError
            if isinstance(cause, ValueError):  # bad model / sizes: the user's error
                raise cause from None
            raise
        except BaseException:
            self.shutdown()
            raise

    def _get(self, refs: list[Any]) -> list[Any]:
        """Results in order; the first failing rank fails the executor (no waiting on peers
        that may be stuck in a collective with it)."""
        import ray

        self.check_alive()
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    results[index[ref]] = ray.get(ref)
                except Exception as exc:
                    self.failed = WorkerFailedError(
                        f"tensor-parallel worker rank {index[ref]} failed: {exc}"
                    )
                    self.failed.__cause__ = exc
                    self.shutdown()
                    raise self.failed from exc
        return results

    def node_ids(self) -> list[str]:
        return self.collective_rpc("node_id")

    def collective_rpc(self, method: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return self._get([a.call.remote(method, args) for a in self.actors])

    def execute_model(
        self, sched: SchedulerOutput, logit_rows: list[tuple[int, int]]
    ) -> torch.Tensor:
        import ray

        step = ray.put(build_step_input(sched, logit_rows, self.block_size))
        return self._get([a.execute_step.remote(step) for a in self.actors])[0]

    def shutdown(self) -> None:
        self._finalizer()
