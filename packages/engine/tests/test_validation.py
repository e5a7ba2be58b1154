"""Bad input raises ValueError whose message names the offending field."""

from __future__ import annotations

import pytest

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.config import EngineArgs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"stop": 5}, "stop"),
        ({"stop": ["ok", 3]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"logprobs": -1}, "logprobs"),
        ({"output_kind": "sometimes"}, "output_kind"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_sampling_params_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"block_size": 3}, "block_size"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"kv_cache_memory": "lots"}, "kv_cache_memory"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"dtype": "float8"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"swap_space_gb": -1}, "swap_space_gb"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"kv_cache_dtype": "int4"}, "kv_cache_dtype"),
        ({"kv_cache_dtype": "fp8_e4m3"}, "kv_cache_dtype 'fp8_e4m3' is not supported"),
    ],
)
def test_engine_args_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EngineArgs(**kwargs)


def test_kv_cache_memory_accepts_sizes():
    assert EngineArgs(kv_cache_memory="512MiB").kv_cache_memory == 512 * 1024**2
    assert EngineArgs(kv_cache_memory=1000).kv_cache_memory == 1000


def test_request_errors(llama_dir):
    llm = LLM(str(llama_dir), kv_cache_memory="4MiB", max_model_len=64)
    with pytest.raises(ValueError, match="empty"):
        llm.generate("", use_tqdm=False)
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([[5] * 64], use_tqdm=False)
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate([[5, 10**6]], use_tqdm=False)
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(["a", "b"], [SamplingParams()], use_tqdm=False)
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(str(llama_dir), max_model_len=10**6)
    assert llm.llm_engine.block_manager.all_free()


def test_unknown_model_and_architecture(tmp_path, llama_dir):
    import json
    import shutil

    with pytest.raises(ValueError, match="not found"):
        LLM(str(tmp_path / "nope"))
    odd = tmp_path / "odd"
    shutil.copytree(llama_dir, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["architectures"] = ["MysteryForCausalLM"]
    cfg["model_type"] = "llama"
    (odd / "config.json").write_text(json.dumps(cfg))
    LLM(str(odd), kv_cache_memory="4MiB")  # falls back to model_type
    from types import SimpleNamespace

    from leaflm.engine.models.registry import resolve_model_class

    cfg = SimpleNamespace(architectures=["MysteryForCausalLM"], model_type="mystery")
    with pytest.raises(ValueError, match="MysteryForCausalLM"):
        resolve_model_class(cfg)
