"""GGUF tensor names -> HF parameter names, with the value fixes llama.cpp's converter applied.

llama.cpp's `convert_hf_to_gguf.py` permutes the rows of LLaMA-family Q/K weights (from HF's
rotate-half layout to interleaved pairs) and stores Gemma norm weights as `1 + w`; both are
undone here so the HF model computes exactly what llama.cpp computes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from leaflm.engine.gguf.file import GGUFError, GGUFFile

_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_COMMON = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
}
_LAYER_LLAMA = {**_LAYER_COMMON, "ffn_norm": "post_attention_layernorm"}
_LAYER_GEMMA3 = {
    **_LAYER_COMMON,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_LAYER_MAPS = {
    "llama": _LAYER_LLAMA,
    "qwen2": _LAYER_LLAMA,
    "qwen3": _LAYER_LLAMA,
    "gemma3": _LAYER_GEMMA3,
}
_BASE_REQUIRED = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "attn_norm",
)
_REQUIRED = {
    "llama": (*_BASE_REQUIRED, "ffn_norm"),
    "qwen2": (*_BASE_REQUIRED, "ffn_norm", "attn_q.bias", "attn_k.bias", "attn_v.bias"),
    "qwen3": (*_BASE_REQUIRED, "ffn_norm", "attn_q_norm", "attn_k_norm"),
    "gemma3": (
        *_BASE_REQUIRED,
        "ffn_norm",
        "post_attention_norm",
        "post_ffw_norm",
        "attn_q_norm",
        "attn_k_norm",
    ),
}
_LAYER_NAME = re.compile(r"^blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$")
_GLOBAL_NAME = re.compile(r"^([a-z_]+)\.(weight|bias)$")


def hf_name(f: GGUFFile, gguf_name: str) -> str:
    """The HF parameter name for `gguf_name`; an unknown tensor is an error, never skipped."""
    m = _LAYER_NAME.match(gguf_name)
    if m:
        layer, part, kind = m.groups()
        target = _LAYER_MAPS[f.architecture].get(part)
        if target is not None:
            return f"model.layers.{layer}.{target}.{kind}"
    m = _GLOBAL_NAME.match(gguf_name)
    if m and m.group(1) in _GLOBAL:
        return f"{_GLOBAL[m.group(1)]}.{m.group(2)}"
    raise GGUFError(
        f"{f.path}: tensor {gguf_name!r} has no HF counterpart for architecture {f.architecture!r}"
    )


def check_complete(f: GGUFFile, num_layers: int) -> None:
    """Raise naming the first tensor a correct model needs but the file lacks."""
    needed = ["token_embd.weight", "output_norm.weight"]
    for i in range(num_layers):
        for part in _REQUIRED[f.architecture]:
            needed.append(f"blk.{i}.{part}" if "." in part else f"blk.{i}.{part}.weight")
    for name in needed:
        if name not in f.tensors:
            raise GGUFError(f"{f.path}: tensor {name!r} is missing")
    extra_layers = [
        n for n in f.tensors if (m := _LAYER_NAME.match(n)) and int(m.group(1)) >= num_layers
    ]
    if extra_layers:
        raise GGUFError(f"{f.path}: tensor {extra_layers[0]!r} is beyond block_count={num_layers}")


def unpermute_qk(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """Invert llama.cpp's `permute`: per head, interleaved (x0,y0,x1,y1..) rows -> halves."""
    rows = weights.shape[0]
    if rows % (2 * num_heads):
        raise GGUFError(f"cannot unpermute {rows} rows over {num_heads} heads")
    w = weights.reshape(num_heads, rows // num_heads // 2, 2, *weights.shape[1:])
    return np.ascontiguousarray(w.swapaxes(1, 2).reshape(weights.shape))


def permute_qk(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's `permute` (HF -> GGUF), kept next to its inverse for tests and writers."""
    rows = weights.shape[0]
    w = weights.reshape(num_heads, 2, rows // num_heads // 2, *weights.shape[1:])
    return np.ascontiguousarray(w.swapaxes(1, 2).reshape(weights.shape))


def iter_hf_tensors(f: GGUFFile, config: dict) -> Iterator[tuple[str, np.ndarray]]:
    """Yield `(hf_name, float32 array)` for every tensor in the file, one at a time."""
    check_complete(f, config["num_hidden_layers"])
    names = {name: hf_name(f, name) for name in f.tensors}  # validate every name before work
    for gguf_name, name in names.items():
        weights = f.dequantize(gguf_name)
        if f.architecture == "llama" and gguf_name.endswith("attn_q.weight"):
            weights = unpermute_qk(weights, config["num_attention_heads"])
        elif f.architecture == "llama" and gguf_name.endswith("attn_k.weight"):
            weights = unpermute_qk(weights, config["num_key_value_heads"])
        elif f.architecture == "gemma3" and gguf_name.endswith("norm.weight"):
            weights = weights - 1.0
        yield name, weights
