"""CPU KV-cache sizing: what the configuration can use, capped; resident once used, but for
the first blocks (`kv_cache_prefault`), resident from the start."""

from __future__ import annotations

import logging

import pytest
import torch

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.kv_cache import KVCache, bytes_per_block, default_cpu_kv_bytes


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_cpu_cache_holds_max_num_seqs_times_max_model_len(llama_dir, caplog):
    with caplog.at_level(logging.INFO, logger="leaflm.engine"):
        llm = LLM(str(llama_dir), max_num_seqs=3, max_model_len=40, block_size=16)
    # 40 tokens need 3 blocks of 16; three such sequences need 9.
    assert llm.llm_engine.cache_config.num_blocks == 9
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("KV cache"))
    assert "9 blocks x 16 tokens = 144 tokens" in line, line
    assert "max_num_seqs=3 x max_model_len=40" in line, line
    # Three full-length sequences at once fit without preemption.
    outs = llm.generate(
        [[5, 6, 7]] * 3, SamplingParams(max_tokens=37, ignore_eos=True), use_tqdm=False
    )
    assert [len(o.outputs[0].token_ids) for o in outs] == [37, 37, 37]
    assert llm.llm_engine.block_manager.all_free()


def test_default_cpu_cache_is_capped_and_explicit_memory_wins(llama_dir):
    llm = LLM(str(llama_dir))  # 256 x 512 tokens of a tiny model: well under the cap
    engine = llm.llm_engine
    layers, heads, dim = engine.runner.kv_shape()
    per_block = bytes_per_block(layers, 16, heads, dim, torch.float32)
    need = 256 * (512 // 16)
    assert engine.cache_config.num_blocks == min(need, default_cpu_kv_bytes() // per_block)
    small = LLM(str(llama_dir), kv_cache_memory=20 * per_block)
    assert small.llm_engine.cache_config.num_blocks == 20


def test_cpu_cache_pages_are_resident_only_once_written():
    before = _rss_anon()
    kv = KVCache(2, 4096, 16, 4, 64, torch.float32, torch.device("cpu"))  # 256 MiB
    assert kv.data.untyped_storage().nbytes() == 256 * 2**20
    grown = _rss_anon() - before
    assert grown < 32 * 2**20, f"a fresh 256 MiB cache made {grown / 2**20:.0f} MiB resident"
    assert not kv.data[:, :, ::97].any()  # reads as zeros everywhere
    kv.layers[1][0][7].fill_(1.0)
    assert kv.data.sum().item() == 16 * 4 * 64


def test_cpu_cache_prefaults_its_first_blocks_only():
    before = _rss_anon()
    kv = KVCache(2, 4096, 16, 4, 64, torch.float32, torch.device("cpu"), 0, 1024)  # 256 MiB
    grown = _rss_anon() - before
    # the first quarter of every layer's K and V (64 MiB in all) is resident, the rest not
    assert 60 * 2**20 < grown < 96 * 2**20, f"{grown / 2**20:.0f} MiB resident"
    assert not kv.data[:, :, ::97].any()


def test_prefault_is_capped_by_the_cache_and_zero_turns_it_off(llama_dir):
    probe = LLM(str(llama_dir), kv_cache_memory="1MiB")
    layers, heads, dim = probe.llm_engine.runner.kv_shape()
    per_block = bytes_per_block(layers, 16, heads, dim, torch.float32)
    assert probe.llm_engine.cache_config.num_prefault_blocks == (2**20 // per_block)  # all
    some = LLM(str(llama_dir), kv_cache_memory=20 * per_block, kv_cache_prefault=5 * per_block)
    assert some.llm_engine.cache_config.num_prefault_blocks == 5
    none = LLM(str(llama_dir), kv_cache_memory=20 * per_block, kv_cache_prefault="0")
    assert none.llm_engine.cache_config.num_prefault_blocks == 0
    with pytest.raises(ValueError, match="kv_cache_prefault"):
        LLM(str(llama_dir), kv_cache_prefault="lots")


def test_a_float16_cache_holds_twice_the_tokens_and_generates_alike(llama_dir, caplog):
    """The same memory holds twice the blocks; greedy text and logprobs stay those of the
    float32 cache (the tiny model's keys and values round to 11 significant bits)."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=1)
    prompts = [[5, 6, 7, 8, 9] * 7, [11, 3]]
    runs = {}
    for kv in ("auto", "fp16"):
        with caplog.at_level(logging.INFO, logger="leaflm.engine"):
            llm = LLM(str(llama_dir), kv_cache_memory="2MiB", kv_cache_dtype=kv)
        engine = llm.llm_engine
        assert engine.runner.kv.data.dtype == (torch.float16 if kv == "fp16" else torch.float32)
        outs = llm.generate(prompts, params, use_tqdm=False)
        runs[kv] = (engine.cache_config.num_blocks, [o.outputs[0] for o in outs])
    assert runs["fp16"][0] == 2 * runs["auto"][0]
    assert any("KV cache float16" in r.getMessage() for r in caplog.records)
    for want, got in zip(runs["auto"][1], runs["fp16"][1], strict=True):
        assert got.token_ids == want.token_ids
        for w, g, t in zip(want.logprobs, got.logprobs, want.token_ids, strict=True):
            assert abs(w[t].logprob - g[t].logprob) < 5e-3
