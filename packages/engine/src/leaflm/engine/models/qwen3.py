"""Qwen3 (dense): the LLaMA block plus per-head RMSNorm on queries and keys before RoPE.

`head_dim` is its own config value (not hidden/heads), attention has no QKV bias unless
`attention_bias`, and layers may be sliding-window per `layer_types`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from leaflm.engine.forward_context import ForwardContext
from leaflm.engine.layers.attention import Attention
from leaflm.engine.layers.embedding import LMHead, VocabEmbedding
from leaflm.engine.layers.linear import Linear, MergedLinear
from leaflm.engine.layers.norm import RMSNorm
from leaflm.engine.layers.rope_settings import rope_settings
from leaflm.engine.layers.rotary import RotaryEmbedding
from leaflm.engine.models.llama import LlamaMLP, layer_sliding_window


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.q_size, self.kv_size = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        )
        bias = bool(getattr(cfg, "attention_bias", False))
        self.qkv_proj = MergedLinear(
            cfg.hidden_size, [self.q_size, self.kv_size, self.kv_size], bias=bias
        )
        self.o_proj = Linear(self.q_size, cfg.hidden_size, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.rotary = rotary
        self.attn = Attention(
            layer_idx,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.head_dim**-0.5,
            sliding_window=layer_sliding_window(cfg, layer_idx),
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


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Qwen3Attention(cfg, layer_idx, rotary)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, ctx)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class Qwen3Model(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        rope = rope_settings(cfg)
        rotary = RotaryEmbedding(
            head_dim, head_dim, cfg.max_position_embeddings, rope.base, rope.scaling, is_neox=True
        )
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            Qwen3DecoderLayer(cfg, i, rotary) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, ctx)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class Qwen3ForCausalLM(nn.Module):
    packed_modules: ClassVar[dict[str, tuple[str, int]]] = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    ignored_weights: ClassVar[tuple[str, ...]] = ("rotary_emb.inv_freq",)

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.config = cfg
        self.model = Qwen3Model(cfg)
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        self.lm_head = LMHead(
            cfg.vocab_size, cfg.hidden_size, self.model.embed_tokens if tied else None
        )
        self.tied_weights = {"lm_head.weight"} if tied else set()
        attn = self.model.layers[0].self_attn
        self.num_layers, self.num_kv_heads, self.head_dim = (
            cfg.num_hidden_layers,
            attn.num_kv_heads,
            attn.head_dim,
        )

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
