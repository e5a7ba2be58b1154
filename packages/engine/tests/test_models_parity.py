"""Greedy parity with HF Transformers for the architectures beyond the LLaMA family.

Each tiny random model (see `leaflm.engine.testing.tiny_config`) runs a batch of prompts of
mixed lengths through leaflm and through Transformers: the greedy token ids must be
identical and the chosen tokens' logprobs within 1e-4 (float32). A small token budget
(`max_num_batched_tokens`) makes long prompts prefill in chunks, and for Gemma 3 the prompts
(and Mistral's) are longer than the 16-token sliding window, so chunks cross the window boundary.
"""

from __future__ import annotations

import pytest

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.testing import assert_greedy_parity, hf_greedy, random_token_prompts

MAX_NEW = 10

CASES = {
    "mistral": {},  # window 16: chunked prefill across the window boundary
    "gpt2": {},
    "gpt_neox": {},
    "gpt_neox_sequential": {"use_parallel_residual": False},
    "bloom": {},
    "falcon": {},
    "falcon_new": {},
    "falcon_alibi": {"alibi": True, "multi_query": False},
    "qwen3": {},
    "gemma3": {},
}


def _arch(case: str) -> str:
    return {"gpt_neox_sequential": "gpt_neox", "falcon_alibi": "falcon"}.get(case, case)


def check_parity(model_dir, prompts, max_num_batched_tokens: int = 24) -> None:
    reference = hf_greedy(model_dir, prompts, MAX_NEW)
    llm = LLM(str(model_dir), kv_cache_memory="4MiB", max_num_batched_tokens=max_num_batched_tokens)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=1)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [out.prompt_token_ids for out in outs] == prompts
    assert_greedy_parity(outs, reference)
    engine = llm.llm_engine
    assert engine.stats().num_blocks_free == engine.stats().num_blocks_total


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_and_logprobs_match_transformers(tiny_models, case):
    model_dir = tiny_models(_arch(case), **CASES[case])
    # 3..44 tokens: several prompts exceed Gemma 3's 16-token window and the 24-token budget.
    prompts = random_token_prompts(5, vocab=380, lo=3, hi=45, seed=7)
    check_parity(model_dir, prompts)
