"""HF `config.json` values from GGUF metadata, one builder per supported GGUF architecture.

Every value comes from the file or, where the file may omit it, from llama.cpp's own default
(rope base 10000); where llama.cpp itself hard-codes a value instead of storing
it (Gemma 3's local rope base and its 5:1 sliding/global layer pattern), the same constant is
used here, so the HF model computes what llama.cpp computes.
"""

from __future__ import annotations

from typing import Any

from leaflm.engine.gguf.file import GGUFError, GGUFFile


def build_config(f: GGUFFile) -> dict[str, Any]:
    """Keyword arguments for the transformers config class of `f`'s architecture."""
    builder = _BUILDERS.get(f.architecture)
    if builder is None:
        raise GGUFError(
            f"{f.path}: GGUF architecture {f.architecture!r} is not supported "
            f"(supported: {', '.join(sorted(_BUILDERS))})"
        )
    return builder(f)


def _common(f: GGUFFile) -> dict[str, Any]:
    n_head = int(f.arch("attention.head_count"))
    hidden = int(f.arch("embedding_length"))
    tokens = f.get("tokenizer.ggml.tokens", None)
    vocab_size = f.arch("vocab_size", None) or (len(tokens) if tokens else None)
    if vocab_size is None:
        raise GGUFError(
            f"{f.path}: neither {f.architecture}.vocab_size nor a token list is present"
        )
    embd = f.tensors.get("token_embd.weight")
    if embd is not None and int(embd.shape[-1]) != int(vocab_size):
        raise GGUFError(
            f"{f.path}: token_embd.weight has {int(embd.shape[-1])} rows, vocab size is {vocab_size}"
        )
    head_dim = int(f.arch("attention.key_length", hidden // n_head))
    rope_dims = f.arch("rope.dimension_count", None)
    if rope_dims is not None and int(rope_dims) != head_dim:
        raise GGUFError(
            f"{f.path}: partial rotary ({rope_dims} of {head_dim} dims) is not supported "
            f"for GGUF architecture {f.architecture!r}"
        )
    if "rope_freqs.weight" in f.tensors:
        raise GGUFError(
            f"{f.path}: tensor 'rope_freqs.weight' (llama3-style rope frequency factors) "
            "is not supported for GGUF conversion"
        )
    config: dict[str, Any] = {
        "vocab_size": int(vocab_size),
        "hidden_size": hidden,
        "intermediate_size": int(f.arch("feed_forward_length")),
        "num_hidden_layers": int(f.arch("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(f.arch("attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "max_position_embeddings": int(f.arch("context_length")),
        "rms_norm_eps": float(f.arch("attention.layer_norm_rms_epsilon")),
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "bos_token_id": f.get("tokenizer.ggml.bos_token_id", None),
        "eos_token_id": f.get("tokenizer.ggml.eos_token_id", None),
        "pad_token_id": f.get("tokenizer.ggml.padding_token_id", None),
    }
    return config


def _rope(f: GGUFFile, theta: float) -> dict[str, Any]:
    """One rope_parameters entry: the base plus llama.cpp's stored scaling, if any."""
    kind = f.arch("rope.scaling.type", "none")
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(theta)}
    if kind in ("none", None):
        return params
    if kind == "linear":
        return {**params, "rope_type": "linear", "factor": float(f.arch("rope.scaling.factor"))}
    raise GGUFError(f"{f.path}: rope scaling type {kind!r} is not supported for GGUF conversion")


def _llama(f: GGUFFile) -> dict[str, Any]:
    config = _common(f)
    config.update(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_act="silu",
        attention_bias="blk.0.attn_q.bias" in f.tensors,
        mlp_bias=False,
        rope_parameters=_rope(f, f.arch("rope.freq_base", 10000.0)),
    )
    return config


def _qwen2(f: GGUFFile) -> dict[str, Any]:
    config = _common(f)
    config.update(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        hidden_act="silu",
        use_sliding_window=False,
        rope_parameters=_rope(f, f.arch("rope.freq_base", 10000.0)),
    )
    return config


def _qwen3(f: GGUFFile) -> dict[str, Any]:
    config = _common(f)
    config.update(
        model_type="qwen3",
        architectures=["Qwen3ForCausalLM"],
        hidden_act="silu",
        attention_bias="blk.0.attn_q.bias" in f.tensors,
        use_sliding_window=False,
        rope_parameters=_rope(f, f.arch("rope.freq_base", 10000.0)),
    )
    return config


# llama.cpp (src/llama-model.cpp, LLM_ARCH_GEMMA3): every 6th layer is global, local layers use
# rope base 10000 unless the file says otherwise, and the 27B model scales queries by
# 1/sqrt(hidden/heads) instead of 1/sqrt(head_dim).
_GEMMA3_SWA_PATTERN = 6
_GEMMA3_27B_LAYERS = 62


def _gemma3(f: GGUFFile) -> dict[str, Any]:
    config = _common(f)
    n_layers = config["num_hidden_layers"]
    layer_types = [
        "full_attention" if (i + 1) % _GEMMA3_SWA_PATTERN == 0 else "sliding_attention"
        for i in range(n_layers)
    ]
    scalar = config["head_dim"]
    if n_layers == _GEMMA3_27B_LAYERS:
        scalar = config["hidden_size"] // config["num_attention_heads"]
    local = {"rope_type": "default", "rope_theta": float(f.arch("rope.freq_base_swa", 10000.0))}
    config.update(
        model_type="gemma3_text",
        architectures=["Gemma3ForCausalLM"],
        hidden_activation="gelu_pytorch_tanh",
        sliding_window=int(f.arch("attention.sliding_window")),
        layer_types=layer_types,
        query_pre_attn_scalar=scalar,
        attention_bias=False,
        final_logit_softcapping=f.arch("final_logit_softcapping", None),
        attn_logit_softcapping=f.arch("attn_logit_softcapping", None),
        rope_parameters={
            "full_attention": _rope(f, f.arch("rope.freq_base", 10000.0)),
            "sliding_attention": local,
        },
    )
    return config


_BUILDERS = {"llama": _llama, "qwen2": _qwen2, "qwen3": _qwen3, "gemma3": _gemma3}
SUPPORTED_ARCHITECTURES = tuple(sorted(_BUILDERS))
