"""Outputs do not depend on KV-cache pressure: recompute and swap preemption, prefix caching."""

from __future__ import annotations

import pytest

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.testing import random_token_prompts

# Tiny llama: 2 layers x 2 KV heads x head_dim 16, float32 -> 2 KiB per 4-token block.
BLOCK_BYTES = 2 * 2 * 4 * 2 * 16 * 4


def _run(model_dir, prompts, params, **kwargs):
    llm = LLM(str(model_dir), block_size=4, **kwargs)
    outs = llm.generate(prompts, params, use_tqdm=False)
    return llm, [(o.outputs[0].token_ids, o.outputs[0].text) for o in outs]


@pytest.fixture(scope="module")
def workload():
    prompts = random_token_prompts(8, vocab=380, lo=10, hi=40, seed=3)
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    seeded = [
        SamplingParams(temperature=0.9, top_p=0.9, seed=100 + i, max_tokens=24, ignore_eos=True)
        for i in range(len(prompts))
    ]
    return prompts, greedy, seeded


@pytest.mark.parametrize("kind", ["greedy", "seeded"])
def test_recompute_preemption_keeps_outputs(llama_dir, workload, assert_no_leaks, kind):
    prompts, greedy, seeded = workload
    params = greedy if kind == "greedy" else seeded
    _, reference = _run(llama_dir, prompts, params, kv_cache_memory="4MiB")
    # 24 blocks = 96 tokens for 8 sequences of up to 63 tokens: constant preemption.
    llm, small = _run(llama_dir, prompts, params, kv_cache_memory=24 * BLOCK_BYTES)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    assert small == reference
    assert_no_leaks(llm)


def test_swap_preemption_keeps_outputs(llama_dir, workload, assert_no_leaks):
    prompts, _, seeded = workload
    _, reference = _run(llama_dir, prompts, seeded, kv_cache_memory="4MiB")
    llm, small = _run(
        llama_dir, prompts, seeded, kv_cache_memory=24 * BLOCK_BYTES, swap_space_gb=0.0002
    )
    engine = llm.llm_engine
    assert engine.scheduler.num_swap_outs > 0
    assert small == reference
    assert_no_leaks(llm)


def test_prefix_caching_on_and_off_agree(llama_dir, assert_no_leaks):
    shared = random_token_prompts(1, vocab=380, lo=30, hi=31, seed=7)[0]
    tails = random_token_prompts(6, vocab=380, lo=1, hi=12, seed=8)
    prompts = [shared + t for t in tails]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    llm_off, off = _run(
        llama_dir, prompts, params, kv_cache_memory="4MiB", enable_prefix_caching=False
    )
    assert llm_off.llm_engine.stats().prefix_cache_hit_rate == 0.0
    llm_on = LLM(str(llama_dir), block_size=4, kv_cache_memory="4MiB", enable_prefix_caching=True)
    # The first prompt fills the cache; the others reuse its 7 full shared blocks.
    first = llm_on.generate(prompts[:1], params, use_tqdm=False)
    rest = llm_on.generate(prompts[1:], params, use_tqdm=False)
    on = [(o.outputs[0].token_ids, o.outputs[0].text) for o in first + rest]
    assert on == off
    assert llm_on.llm_engine.stats().prefix_cache_hit_rate > 0.3
    # Run again: everything hits and outputs are still identical.
    again = llm_on.generate(prompts, params, use_tqdm=False)
    assert [(o.outputs[0].token_ids, o.outputs[0].text) for o in again] == off
    assert_no_leaks(llm_on)
    assert_no_leaks(llm_off)
