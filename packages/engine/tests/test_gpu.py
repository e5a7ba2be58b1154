"""The CUDA path (Triton kernels, profiled KV-cache sizing): run by `nox -s gpu` on a GPU."""

from __future__ import annotations

import pytest
import torch

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.testing import assert_greedy_parity, hf_greedy, random_token_prompts

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_cuda_float32_greedy_matches_transformers(tiny_models, assert_no_leaks, arch):
    model_dir = tiny_models(arch)
    prompts = random_token_prompts(6, vocab=380, lo=3, hi=40, seed=1)
    reference = hf_greedy(model_dir, prompts, 12)
    llm = LLM(str(model_dir), device="cuda", dtype="float32", gpu_memory_utilization=0.3)
    assert llm.llm_engine.block_manager.num_blocks > 100
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=1)
    assert_greedy_parity(llm.generate(prompts, params, use_tqdm=False), reference, tol=2e-3)
    assert_no_leaks(llm)


def test_cuda_bf16_sampling_preemption_and_forks(llama_dir, assert_no_leaks):
    llm = LLM(str(llama_dir), device="cuda", block_size=16, gpu_memory_utilization=0.3)
    assert llm.model_config.dtype == torch.bfloat16
    prompts = random_token_prompts(16, vocab=380, lo=5, hi=60, seed=2)
    params = SamplingParams(n=2, temperature=0.8, top_p=0.9, seed=5, max_tokens=20)
    first = llm.generate(prompts, params, use_tqdm=False)
    again = llm.generate(prompts, params, use_tqdm=False)
    assert [[c.token_ids for c in o.outputs] for o in first] == [
        [c.token_ids for c in o.outputs] for o in again
    ]
    assert llm.llm_engine.stats().prefix_cache_hit_rate > 0
    assert_no_leaks(llm)
