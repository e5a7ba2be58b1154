"""The `ray` executor on a two-node Ray cluster on this machine (as Ray's own tests do).

Each node offers one CPU, so the placement group's two one-CPU bundles land one per node:
rank 0 on the head, rank 1 on the second node (asserted on the actors' node ids). With Ray
connected, TP=2 picks the `ray` backend by default and must match TP=1 in-process. The
cluster is shut down in `finally`, also when the test fails.
"""

from __future__ import annotations

import time

import pytest

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.config import EngineArgs
from leaflm.engine.executor import resolve_backend
from leaflm.engine.testing import random_token_prompts

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

NODE = {"num_cpus": 1, "object_store_memory": 100 * 1024**2}


@pytest.fixture(scope="module")
def two_node_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def greedy(outs):
    return [
        (
            list(o.outputs[0].token_ids),
            [
                lp[t].logprob
                for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids, strict=True)
            ],
        )
        for o in outs
    ]


def test_tp2_one_rank_per_node_matches_tp1(two_node_cluster, tiny_models):
    model_dir = str(tiny_models("llama", num_key_value_heads=1))
    prompts = random_token_prompts(4, vocab=380, lo=3, hi=30, seed=2)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=1)
    tp1 = greedy(LLM(model_dir, kv_cache_memory="1MiB").generate(prompts, params, use_tqdm=False))

    assert resolve_backend(EngineArgs(tensor_parallel_size=2)) == "ray"
    llm = LLM(model_dir, kv_cache_memory="1MiB", tensor_parallel_size=2)
    try:
        executor = llm.llm_engine.executor
        assert type(executor).__name__ == "RayExecutor"
        nodes = executor.node_ids()
        cluster_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(set(nodes)) == 2 and set(nodes) == cluster_nodes
        tp2 = greedy(llm.generate(prompts, params, use_tqdm=False))
    finally:
        llm.shutdown()
    for (ids1, lp1), (ids2, lp2) in zip(tp1, tp2, strict=True):
        assert ids2 == ids1
        assert max(abs(a - b) for a, b in zip(lp1, lp2, strict=True)) <= 1e-4
    # Shutdown killed the actors and returned the bundles (Ray frees them asynchronously).
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def test_dead_actor_fails_the_requests_and_frees_the_bundles(two_node_cluster, tiny_models):
    from leaflm.engine.executor import WorkerFailedError

    llm = LLM(str(tiny_models("llama")), kv_cache_memory="1MiB", tensor_parallel_size=2)
    try:
        engine = llm.llm_engine
        params = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)
        engine.add_request("a", [5, 6, 7], params)
        engine.step()
        ray.kill(engine.executor.actors[1])
        with pytest.raises(WorkerFailedError, match="rank 1 failed"):
            for _ in range(100):
                engine.step()
        assert not engine.requests and engine.block_manager.all_free()
    finally:
        llm.shutdown()
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2
