"""Checkpoint loading: sharded safetensors, .bin, and errors that name the tensor and file."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.testing import random_token_prompts

PARAMS = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def _greedy(model_dir, prompts):
    outs = LLM(str(model_dir), kv_cache_memory="4MiB").generate(prompts, PARAMS, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def hf_model(llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)


def _copy_without_weights(src, dst):
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.json.index*")
    )
    for f in dst.glob("model*.safetensors*"):
        f.unlink()


def test_sharded_and_bin_checkpoints_load_identically(tmp_path, llama_dir, hf_model):
    prompts = random_token_prompts(3, vocab=380, seed=12)
    expected = _greedy(llama_dir, prompts)
    sharded = tmp_path / "sharded"
    _copy_without_weights(llama_dir, sharded)
    hf_model.save_pretrained(sharded, max_shard_size="60KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert _greedy(sharded, prompts) == expected
    binary = tmp_path / "bin"
    _copy_without_weights(llama_dir, binary)
    torch.save(hf_model.state_dict(), binary / "pytorch_model.bin")
    assert _greedy(binary, prompts) == expected


def test_tied_embeddings(tiny_models):
    model_dir = tiny_models("llama", tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(model_dir / "model.safetensors")
    from leaflm.engine.testing import hf_greedy

    prompts = random_token_prompts(2, vocab=380, seed=13)
    assert _greedy(model_dir, prompts) == [ids for ids, _ in hf_greedy(model_dir, prompts, 8)]


def test_missing_and_unexpected_tensors_are_named(tmp_path, llama_dir):
    weights = load_file(llama_dir / "model.safetensors")
    missing = tmp_path / "missing"
    _copy_without_weights(llama_dir, missing)
    partial = {k: v for k, v in weights.items() if k != "model.layers.1.self_attn.k_proj.weight"}
    save_file(partial, missing / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
        LLM(str(missing))
    extra = tmp_path / "extra"
    _copy_without_weights(llama_dir, extra)
    save_file(
        {**weights, "model.layers.0.mystery.weight": torch.zeros(2)},
        extra / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(ValueError, match=r"mystery\.weight.*model\.safetensors"):
        LLM(str(extra))
    empty = tmp_path / "empty"
    _copy_without_weights(llama_dir, empty)
    with pytest.raises(ValueError, match="no weights"):
        LLM(str(empty))
