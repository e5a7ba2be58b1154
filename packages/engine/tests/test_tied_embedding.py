"""A tied LM head packed on CPU: the embedding reads its rows from the packed copy, so the
vocabulary table is held once, and generation still matches HF Transformers."""

from __future__ import annotations

import pytest

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.testing import assert_greedy_parity, hf_greedy, random_token_prompts
from leaflm.kernels.cpu import gemm


def test_tied_head_shares_its_packed_table_and_matches_transformers(tiny_models):
    if not gemm.packing_available() or not gemm.panel_width():
        pytest.skip("needs leaflm's packed CPU GEMM (AVX-512 C kernels)")
    model_dir = tiny_models("llama", tie_word_embeddings=True)
    llm = LLM(str(model_dir), kv_cache_memory="2MiB")
    model = llm.llm_engine.runner.model
    embed, head = model.model.embed_tokens, model.lm_head
    assert embed.weight is None and embed.row_source is not None and head.packed is not None
    prompts = random_token_prompts(3, vocab=380, lo=3, hi=30, seed=5)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=1)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert_greedy_parity(outs, hf_greedy(model_dir, prompts, 8))
