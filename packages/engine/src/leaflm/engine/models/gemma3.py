"""Gemma 3 (text): interleaved sliding-window and global layers, each kind with its own RoPE.

Per HF `Gemma3ForCausalLM`: embeddings scaled by sqrt(hidden); RMSNorm multiplies by
`1 + weight`; four norms per block (before/after attention and MLP); per-head RMSNorm on
queries and keys; queries scaled by `query_pre_attn_scalar**-0.5`; a GeGLU MLP (tanh GELU);
optional attention and final-logit soft-capping. `layer_types` says which layers slide
(window `sliding_window`, rope base of `sliding_attention`) and which are global.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leaflm import kernels
from leaflm.engine.forward_context import ForwardContext
from leaflm.engine.layers.activation import GeluAndMul
from leaflm.engine.layers.attention import Attention
from leaflm.engine.layers.embedding import VocabEmbedding
from leaflm.engine.layers.linear import MergedLinear, RowParallelLinear
from leaflm.engine.layers.rope_settings import rope_settings
from leaflm.engine.layers.rotary import RotaryEmbedding
from leaflm.engine.layers.sharding import arch_of, scaled, shard_heads
from leaflm.engine.models.base import LLAMA_PACKED_MODULES, ROTARY_BUFFERS, CausalLM


class GemmaRMSNorm(nn.Module):
    """RMSNorm with Gemma's `(1 + weight)` scale (weights are stored zero-centred)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, 1.0 + self.weight.float(), self.eps)


def layer_types(cfg: Any) -> list[str]:
    """Each layer's kind, from `layer_types` or (older configs) `sliding_window_pattern`."""
    types = getattr(cfg, "layer_types", None)
    if types is None:
        pattern = getattr(cfg, "sliding_window_pattern", None) or getattr(
            cfg, "_sliding_window_pattern", None
        )
        if pattern is None:
            raise ValueError("Gemma 3 config has neither layer_types nor sliding_window_pattern")
        types = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(cfg.num_hidden_layers)
        ]
    if len(types) != cfg.num_hidden_layers:
        raise ValueError(f"layer_types has {len(types)} entries for {cfg.num_hidden_layers} layers")
    return list(types)


class Gemma3Attention(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int, kind: str, rotary: RotaryEmbedding) -> None:
        super().__init__()
        heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        d = self.head_dim = cfg.head_dim
        shard = shard_heads(arch_of(cfg), heads, kv_heads)  # this rank's heads
        self.num_heads, self.num_kv_heads = shard.num_heads, shard.num_kv_heads
        self.q_size, self.kv_size = self.num_heads * d, self.num_kv_heads * d
        bias = bool(getattr(cfg, "attention_bias", False))
        q, kv = scaled(shard.q, d), scaled(shard.kv, d)
        self.qkv_proj = MergedLinear(
            cfg.hidden_size, [heads * d, kv_heads * d, kv_heads * d], bias=bias, ranges=[q, kv, kv]
        )
        self.o_proj = RowParallelLinear(heads * d, cfg.hidden_size, bias=bias, ranges=q)
        self.q_norm = GemmaRMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.rotary = rotary
        self.attn = Attention(
            layer_idx,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            cfg.query_pre_attn_scalar**-0.5,
            sliding_window=cfg.sliding_window if kind == "sliding_attention" else None,
            softcap=getattr(cfg, "attn_logit_softcapping", None),
        )

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        t = hidden.shape[0]
        q = self.q_norm(q.reshape(t, self.num_heads, self.head_dim)).view(t, self.q_size)
        k = self.k_norm(k.reshape(t, self.num_kv_heads, self.head_dim)).view(t, self.kv_size)
        self.rotary(positions, q, k)
        return self.o_proj(self.attn(q, k, v, ctx))


class Gemma3MLP(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        act = getattr(cfg, "hidden_activation", None) or cfg.hidden_act
        if act not in ("gelu_pytorch_tanh", "gelu_new"):
            raise ValueError(f"Gemma 3 MLP activation {act!r} is not supported")
        inter = cfg.intermediate_size
        self.gate_up_proj = MergedLinear(cfg.hidden_size, [inter, inter], bias=False)
        self.down_proj = RowParallelLinear(inter, cfg.hidden_size, bias=False)
        self.act = GeluAndMul("tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int, kind: str, rotary: RotaryEmbedding) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = Gemma3Attention(cfg, layer_idx, kind, rotary)
        self.mlp = Gemma3MLP(cfg)
        self.input_layernorm = GemmaRMSNorm(h, eps)
        self.post_attention_layernorm = GemmaRMSNorm(h, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(h, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(h, eps)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        attn = self.self_attn(positions, self.input_layernorm(hidden), ctx)
        hidden = hidden + self.post_attention_layernorm(attn)
        mlp = self.mlp(self.pre_feedforward_layernorm(hidden))
        return hidden + self.post_feedforward_layernorm(mlp)


class Gemma3TextModel(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        if getattr(cfg, "use_bidirectional_attention", False):
            raise ValueError("Gemma 3 with bidirectional attention (an encoder) is not supported")
        kinds = layer_types(cfg)
        rotaries = {}
        for kind in sorted(set(kinds)):
            rope = rope_settings(cfg, kind)
            rotaries[kind] = RotaryEmbedding(
                cfg.head_dim,
                cfg.head_dim,
                cfg.max_position_embeddings,
                rope.base,
                rope.scaling,
                is_neox=True,
            )
        self.rotaries = nn.ModuleDict(rotaries)
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_scale = float(cfg.hidden_size**0.5)
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(cfg, i, kind, rotaries[kind]) for i, kind in enumerate(kinds)
        )
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        emb = self.embed_tokens(input_ids)
        hidden = emb * torch.tensor(self.embed_scale, dtype=emb.dtype)
        for layer in self.layers:
            hidden = layer(positions, hidden, ctx)
        return self.norm(hidden)


class Gemma3ForCausalLM(CausalLM):
    packed_modules = LLAMA_PACKED_MODULES
    ignored_weights = ROTARY_BUFFERS
    tie_by_default = True

    def __init__(self, cfg: Any) -> None:
        model = Gemma3TextModel(cfg)
        attn = model.layers[0].self_attn
        assert isinstance(attn, Gemma3Attention)  # this rank's heads size its KV cache
        kv_shape = (cfg.num_hidden_layers, attn.num_kv_heads, cfg.head_dim)
        super().__init__(cfg, model, model.embed_tokens, kv_shape)
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().compute_logits(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
