"""Tensor parallelism: TP=2 over the `mp` executor (gloo on CPU) matches TP=1 in-process.

Every architecture family runs one batch of mixed-length prompts (chunked prefill through a
small token budget) at TP=1 (`uni`) and at TP=2 (two spawned worker processes): greedy ids
must be identical and the chosen tokens' logprobs within 1e-4. The cases cover GQA with
one KV head (replicated to both ranks), ALiBi (BLOOM, Falcon-RW), sliding windows (Mistral,
Gemma 3), multi-query and grouped Falcon layouts, and tied embeddings (GPT-2, BLOOM, Falcon).
One case runs under KV-cache pressure (recompute preemption) with shared prefixes (prefix
cache hits). Every engine is shut down in `finally`, so no worker outlives a failing test;
the TP engines share one module-scoped `WorkerPool` (spawning dominates their start-up).
"""

from __future__ import annotations

import contextlib

import pytest

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.executor.mp import WorkerPool
from leaflm.engine.parallel_state import set_tensor_parallel
from leaflm.engine.testing import random_token_prompts, tiny_config

MAX_NEW = 8

CASES = {
    "llama_one_kv_head": ("llama", {"num_key_value_heads": 1}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "gemma3": ("gemma3", {}),
    "gpt2": ("gpt2", {}),
    "gpt_neox": ("gpt_neox", {}),
    "bloom": ("bloom", {}),
    "falcon": ("falcon", {}),
    "falcon_new": ("falcon_new", {}),
    # One KV group for two ranks: each rank keeps half the group's query heads plus its k, v.
    "falcon_new_one_kv_head": ("falcon_new", {"num_kv_heads": 1}),
    "falcon_alibi": ("falcon", {"alibi": True, "multi_query": False}),
}


@pytest.fixture(scope="module", autouse=True)
def worker_pool():
    with WorkerPool(2) as pool:
        yield pool


@contextlib.contextmanager
def engine(model_dir, **kwargs):
    llm = LLM(str(model_dir), **kwargs)
    try:
        yield llm
    finally:
        llm.shutdown()


def chosen(outs) -> list[tuple[list[int], list[float]]]:
    """(token ids, logprob of each chosen token) per request."""
    result = []
    for out in outs:
        c = out.outputs[0]
        result.append(
            (
                list(c.token_ids),
                [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids, strict=True)],
            )
        )
    return result


def assert_same(tp1, tp2, tol: float = 1e-4) -> None:
    for (ids1, lps1), (ids2, lps2) in zip(tp1, tp2, strict=True):
        assert ids2 == ids1
        assert max(abs(a - b) for a, b in zip(lps1, lps2, strict=True)) <= tol


def generate(model_dir, prompts, params, **kwargs):
    with engine(model_dir, **kwargs) as llm:
        outs = llm.generate(prompts, params, use_tqdm=False)
        stats = llm.llm_engine.stats()
        assert stats.num_blocks_free == stats.num_blocks_total
        return llm, chosen(outs)


@pytest.mark.parametrize("case", list(CASES))
def test_tp2_matches_tp1(tiny_models, case):
    arch, overrides = CASES[case]
    model_dir = tiny_models(arch, **overrides)
    prompts = random_token_prompts(4, vocab=380, lo=3, hi=40, seed=11)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=1)
    common = {"kv_cache_memory": "4MiB", "max_num_batched_tokens": 24}
    _, tp1 = generate(model_dir, prompts, params, **common)
    llm, tp2 = generate(
        model_dir, prompts, params, tensor_parallel_size=2,
        distributed_executor_backend="mp", **common,
    )  # fmt: skip
    assert llm.llm_engine.runner is None  # the model ran in the workers, not in-process
    assert_same(tp1, tp2)


def test_tp2_with_preemption_and_prefix_caching(tiny_models):
    """Few KV blocks (constant recompute preemption) and shared prefixes (cache hits)."""
    model_dir = tiny_models("llama")
    shared = random_token_prompts(1, vocab=380, lo=24, hi=25, seed=5)[0]
    prompts = [shared + t for t in random_token_prompts(6, vocab=380, lo=2, hi=14, seed=6)]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=1)
    # Tiny llama, 4-token blocks: 2 layers x 2 KV heads x head_dim 16 x fp32 = 2 KiB a block;
    # at TP=2 each rank holds one KV head, so half the bytes give the same 24 blocks.
    block = 2 * 2 * 4 * 2 * 16 * 4
    _, tp1 = generate(model_dir, prompts, params, block_size=4, kv_cache_memory=24 * block)
    llm, tp2 = generate(
        model_dir, prompts, params, block_size=4, kv_cache_memory=12 * block,
        tensor_parallel_size=2,
    )  # fmt: skip
    engine_ = llm.llm_engine
    assert engine_.cache_config.num_blocks == 24
    assert engine_.scheduler.num_preemptions > 0
    assert engine_.stats().prefix_cache_hit_rate > 0
    assert_same(tp1, tp2)


def test_kv_cache_holds_only_the_ranks_kv_heads(tiny_models):
    with engine(tiny_models("llama"), kv_cache_memory="1MiB", tensor_parallel_size=2) as llm:
        shapes = llm.llm_engine.executor.collective_rpc("kv_shape")
    assert [tuple(s) for s in shapes] == [(2, 1, 16), (2, 1, 16)]  # 2 KV heads over 2 ranks


@pytest.mark.parametrize(
    ("arch", "overrides", "tp", "reason"),
    [
        ("llama", {}, 3, "4 attention heads are not divisible by tensor_parallel_size=3"),
        (
            "llama",
            {"hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 3},
            2,
            "3 KV heads",
        ),
        ("gpt2", {"n_inner": 129}, 2, "MLP size 129 is not divisible"),
    ],
)
def test_unsplittable_sizes_name_architecture_and_reason(arch, overrides, tp, reason):
    """Checked where the model is built (as in every worker), without spawning any."""
    from leaflm.engine.models.registry import resolve_model_class

    cfg = tiny_config(arch, 384, **overrides)
    cls = resolve_model_class(cfg)
    cfg.architectures = [cls.__name__]  # as config.json has it
    set_tensor_parallel(0, tp)
    try:
        with pytest.raises(ValueError, match=reason) as info:
            cls(cfg)
    finally:
        set_tensor_parallel(0, 1)
    if "heads" in reason:  # sizes of a generic layer are named by ModelRunner (next test)
        assert cls.__name__ in str(info.value)


def test_unsplittable_model_fails_engine_start_with_value_error(tiny_models):
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.*not divisible"):
        LLM(str(tiny_models("llama")), kv_cache_memory="1MiB", tensor_parallel_size=3)


def test_backend_choice_is_validated(tiny_models):
    with pytest.raises(ValueError, match="distributed_executor_backend"):
        LLM(str(tiny_models("llama")), distributed_executor_backend="threads")
    with pytest.raises(ValueError, match="'uni' runs one rank"):
        LLM(str(tiny_models("llama")), tensor_parallel_size=2, distributed_executor_backend="uni")


def test_a_rank_loads_its_slices_and_packs_them_like_any_weight(tiny_models):
    """Rank 1 of 2, built in-process (loading needs no collectives): its parameters are
    exactly its slices of the checkpoint, and the packed CPU GEMM runs on the shard."""
    import torch
    from safetensors.torch import load_file

    from leaflm.engine.layers.linear import pack_for_cpu
    from leaflm.engine.loader import load_weights
    from leaflm.engine.models.llama import LlamaForCausalLM
    from leaflm.engine.models.registry import load_hf_config

    model_dir = tiny_models("llama")  # hidden 64, 4 heads x 16, 2 KV heads, MLP 128, vocab 384
    set_tensor_parallel(1, 2)
    try:
        model = LlamaForCausalLM(load_hf_config(model_dir))
        load_weights(model, model_dir)
    finally:
        set_tensor_parallel(0, 1)
    full = load_file(str(model_dir / "model.safetensors"))
    layer, hf = model.model.layers[0], "model.layers.0."
    attn = layer.self_attn
    assert (attn.num_heads, attn.num_kv_heads) == (2, 1)
    qkv = torch.cat(
        [
            full[hf + "self_attn.q_proj.weight"][32:64],  # query heads 2, 3
            full[hf + "self_attn.k_proj.weight"][16:32],  # KV head 1
            full[hf + "self_attn.v_proj.weight"][16:32],
        ]
    )
    torch.testing.assert_close(attn.qkv_proj.weight, qkv, rtol=0, atol=0)
    torch.testing.assert_close(
        attn.o_proj.weight, full[hf + "self_attn.o_proj.weight"][:, 32:64], rtol=0, atol=0
    )
    gate_up = torch.cat(
        [full[hf + "mlp.gate_proj.weight"][64:], full[hf + "mlp.up_proj.weight"][64:]]
    )
    torch.testing.assert_close(layer.mlp.gate_up_proj.weight, gate_up, rtol=0, atol=0)
    torch.testing.assert_close(
        layer.mlp.down_proj.weight, full[hf + "mlp.down_proj.weight"][:, 64:], rtol=0, atol=0
    )
    embed = full["model.embed_tokens.weight"]
    torch.testing.assert_close(model.model.embed_tokens.weight, embed[192:], rtol=0, atol=0)

    x = torch.randn(5, 64)
    if pack_for_cpu(model):  # the weight method is independent of the sharding
        assert attn.qkv_proj.packed is not None and attn.qkv_proj.weight is None
    torch.testing.assert_close(attn.qkv_proj(x), x @ qkv.T, rtol=1e-5, atol=1e-5)


def test_each_rank_runs_on_its_own_cores(tiny_models):
    """Default: the visible cores split evenly, one OpenMP thread per core of the rank."""
    import os

    from leaflm.engine.executor.cpu_binding import rank_cores

    with engine(tiny_models("llama"), kv_cache_memory="1MiB", tensor_parallel_size=2) as llm:
        bindings = llm.llm_engine.executor.collective_rpc("cpu_binding")
    expected = rank_cores(2)
    assert [cores for cores, _ in bindings] == expected
    assert [threads for _, threads in bindings] == [len(c) for c in expected]
    visible = sorted(os.sched_getaffinity(0))
    if len(visible) >= 2:  # disjoint, and together all the visible cores
        assert not set(expected[0]) & set(expected[1])
        assert sorted(expected[0] + expected[1]) == visible[: len(expected[0]) * 2]


def test_core_binding_override(monkeypatch):
    from leaflm.engine.executor import cpu_binding

    monkeypatch.setenv(cpu_binding.ENV, "0-2,5|3-4")
    assert cpu_binding.rank_cores(2) == [[0, 1, 2, 5], [3, 4]]
    monkeypatch.setenv(cpu_binding.ENV, "all")
    assert cpu_binding.rank_cores(2) == [None, None]
    monkeypatch.setenv(cpu_binding.ENV, "0-3")
    with pytest.raises(ValueError, match="one non-empty core set per rank"):
        cpu_binding.rank_cores(2)
