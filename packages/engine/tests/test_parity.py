"""Greedy parity with HF Transformers on tiny random Llama, Mistral and Qwen2 models, through
the CPU's fast path (C kernels, packed weights) and through the PyTorch reference."""

from __future__ import annotations

import json

import pytest

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.testing import assert_greedy_parity, hf_greedy, random_token_prompts
from leaflm.kernels.cpu import gemm

MAX_NEW = 12


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_greedy_matches_transformers(tiny_models, assert_no_leaks, monkeypatch, arch, path):
    if path == "reference":
        monkeypatch.setenv("LEAFLM_KERNELS", "torch")  # reference ops
        monkeypatch.setattr(gemm, "packing_available", lambda: False)  # plain F.linear
    model_dir = tiny_models(arch)
    # Prompts up to 40 tokens, so Mistral's 16-token sliding window is exercised.
    prompts = random_token_prompts(6, vocab=380, lo=3, hi=40, seed=1)
    reference = hf_greedy(model_dir, prompts, MAX_NEW)
    llm = LLM(str(model_dir), kv_cache_memory="8MiB", max_num_batched_tokens=64)
    model = llm.llm_engine.runner.model
    packed = model.lm_head.packed is not None
    assert packed == (path == "fast" and gemm.packing_available())
    if packed:  # the SiLU gate runs inside leaflm's GEMM wherever that GEMM exists
        assert model.model.layers[0].mlp.gate_up_proj.packed.gated == bool(gemm.panel_width())
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=1)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [out.prompt_token_ids for out in outs] == prompts
    assert_greedy_parity(outs, reference)
    assert all(out.outputs[0].finish_reason == "length" for out in outs)
    assert_no_leaks(llm)


def test_mlp_bias_matches_transformers(tiny_models, assert_no_leaks):
    """With MLP biases the gate/up GEMM is packed plain and the activation runs on its own."""
    model_dir = tiny_models("llama", mlp_bias=True)
    prompts = random_token_prompts(3, vocab=380, lo=3, hi=20, seed=2)
    reference = hf_greedy(model_dir, prompts, MAX_NEW)
    llm = LLM(str(model_dir), kv_cache_memory="8MiB")
    gate_up = llm.llm_engine.runner.model.model.layers[0].mlp.gate_up_proj
    assert gate_up.packed is None or not gate_up.packed.gated
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=1)
    assert_greedy_parity(llm.generate(prompts, params, use_tqdm=False), reference)
    assert_no_leaks(llm)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
            "rope_theta": 500000.0,
        },
    ],
)
def test_rope_scaling_from_config(tiny_models, rope):
    model_dir = tiny_models("llama", rope_parameters=rope)
    saved = json.loads((model_dir / "config.json").read_text())
    assert (saved.get("rope_parameters") or saved.get("rope_scaling"))["rope_type"] == rope[
        "rope_type"
    ]
    prompts = random_token_prompts(3, vocab=380, lo=20, hi=60, seed=4)
    reference = hf_greedy(model_dir, prompts, 8)
    llm = LLM(str(model_dir), kv_cache_memory="4MiB")
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=0)
    assert_greedy_parity(llm.generate(prompts, params, use_tqdm=False), reference)
