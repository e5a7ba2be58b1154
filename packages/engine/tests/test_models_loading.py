"""Checkpoint and config variants of the non-LLaMA families, and the errors for bad models.

Old-format checkpoints (RWForCausalLM Falcon configs, hub GPT-2 files without the
`transformer.` prefix) must give exactly what Transformers gives on the modern format;
unsupported architectures, configs without a RoPE base and missing weights must fail with
a message that names the problem.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.layers.rope_settings import rope_settings
from leaflm.engine.testing import assert_greedy_parity, hf_greedy, random_token_prompts

PROMPTS = random_token_prompts(3, vocab=380, lo=3, hi=30, seed=3)


def _same_as_transformers(reference_dir, leaflm_dir) -> None:
    reference = hf_greedy(reference_dir, PROMPTS, 8)
    llm = LLM(str(leaflm_dir), kv_cache_memory="2MiB")
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=1)
    assert_greedy_parity(llm.generate(PROMPTS, params, use_tqdm=False), reference)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("arch", ["falcon", "falcon_new"])
def test_legacy_rw_falcon_config_loads(tiny_models, tmp_path, arch):
    modern = tiny_models(arch)
    legacy = _copy(modern, tmp_path / "rw")
    cfg = json.loads((legacy / "config.json").read_text())
    new_arch = cfg.pop("new_decoder_architecture")
    for key in ("rope_parameters", "num_ln_in_parallel_attn", "transformers_version"):
        cfg.pop(key, None)
    cfg["n_head"], cfg["n_layer"] = cfg.pop("num_attention_heads"), cfg.pop("num_hidden_layers")
    kv = cfg.pop("num_kv_heads")
    if new_arch:
        cfg["n_head_kv"] = kv
    cfg["model_type"] = "RefinedWeb" if new_arch else "RefinedWebModel"
    cfg["architectures"] = ["RWForCausalLM"]
    cfg["rope_theta"] = 30000.0  # the tiny model's base; RW configs without it mean 10000
    (legacy / "config.json").write_text(json.dumps(cfg))
    _same_as_transformers(modern, legacy)


def test_hub_style_gpt2_names_and_mask_buffers_load(tiny_models, tmp_path):
    modern = tiny_models("gpt2")
    hub = _copy(modern, tmp_path / "hub")
    tensors = load_file(str(hub / "model.safetensors"))
    renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    renamed["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))
    save_file(renamed, str(hub / "model.safetensors"))
    assert not any(k.startswith("transformer.") for k in load_file(str(hub / "model.safetensors")))
    _same_as_transformers(modern, hub)


def test_missing_weight_is_named(tiny_models, tmp_path):
    broken = _copy(tiny_models("gemma3"), tmp_path / "broken")
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_norm\.weight"):
        LLM(str(broken), kv_cache_memory="2MiB")


@pytest.mark.parametrize(
    ("architectures", "model_type"),
    [(["MambaForCausalLM"], "mamba"), (["FrobnicatorForCausalLM"], "frobnicator")],
)
def test_unsupported_architecture_is_named(tiny_models, tmp_path, architectures, model_type):
    model_dir = _copy(tiny_models("llama"), tmp_path / "m")
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(architectures=architectures, model_type=model_type)
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"unsupported model architecture {architectures[0]}"):
        LLM(str(model_dir), kv_cache_memory="2MiB")


def test_rope_settings_read_every_config_generation():
    modern = SimpleNamespace(
        rope_parameters={"rope_type": "default", "rope_theta": 5e5, "partial_rotary_factor": 0.5}
    )
    assert rope_settings(modern) == rope_settings(
        SimpleNamespace(rotary_emb_base=5e5, rotary_pct=0.5)  # old GPT-NeoX keys
    )
    scaled = rope_settings(
        SimpleNamespace(rope_theta=1e4, rope_scaling={"type": "linear", "factor": 4.0})
    )
    assert scaled.base == 1e4 and scaled.scaling["factor"] == 4.0
    old_gemma = SimpleNamespace(
        rope_theta=1e6, rope_local_base_freq=1e4, rope_scaling={"rope_type": "linear", "factor": 8}
    )
    assert rope_settings(old_gemma, "sliding_attention").base == 1e4
    assert rope_settings(old_gemma, "sliding_attention").scaling is None
    assert rope_settings(old_gemma, "full_attention").scaling["factor"] == 8
    per_type = SimpleNamespace(
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        }
    )
    assert rope_settings(per_type, "full_attention").base == 1e6
    with pytest.raises(ValueError, match="name one"):
        rope_settings(per_type)


def test_missing_rope_base_is_an_error_not_a_default():
    with pytest.raises(ValueError, match="no RoPE base"):
        rope_settings(SimpleNamespace(max_position_embeddings=128))
    with pytest.raises(ValueError, match="sliding_attention"):
        rope_settings(SimpleNamespace(rope_theta=1e6), "sliding_attention")
