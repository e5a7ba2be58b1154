"""Qwen3 (dense): the LLaMA block plus per-head RMSNorm on queries and keys before RoPE.

`head_dim` is its own config value (not hidden/heads), attention has no QKV bias unless
`attention_bias`, and layers may be sliding-window per `layer_types`. Everything but the
attention and the RoPE settings is LLaMA's.
"""

from __future__ import annotations

from typing import Any

import torch

from leaflm.engine.forward_context import ForwardContext
from leaflm.engine.layers.norm import RMSNorm
from leaflm.engine.layers.rope_settings import rope_settings
from leaflm.engine.layers.rotary import RotaryEmbedding
from leaflm.engine.models.base import LLAMA_PACKED_MODULES, ROTARY_BUFFERS, CausalLM
from leaflm.engine.models.llama import LlamaAttention, LlamaModel, llama_kv_shape


class Qwen3Attention(LlamaAttention):
    """LLaMA attention with `attention_bias` on q/k/v and RMSNorm on each head of q and k."""

    def __init__(self, cfg: Any, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__(cfg, layer_idx, rotary, bool(getattr(cfg, "attention_bias", False)))
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        t = hidden.shape[0]
        q = self.q_norm(q.reshape(t, self.num_heads, self.head_dim)).view(t, self.q_size)
        k = self.k_norm(k.reshape(t, self.num_kv_heads, self.head_dim)).view(t, self.kv_size)
        self.rotary(positions, q, k)
        return self.o_proj(self.attn(q, k, v, ctx))


class Qwen3Model(LlamaModel):
    """The LLaMA backbone with Qwen3 attention; RoPE from `rope_settings` (no guessed base)."""

    def __init__(self, cfg: Any) -> None:
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        rope = rope_settings(cfg)
        rotary = RotaryEmbedding(
            head_dim, head_dim, cfg.max_position_embeddings, rope.base, rope.scaling, is_neox=True
        )
        super().__init__(cfg, lambda i: Qwen3Attention(cfg, i, rotary))


class Qwen3ForCausalLM(CausalLM):
    packed_modules = LLAMA_PACKED_MODULES
    ignored_weights = ROTARY_BUFFERS

    def __init__(self, cfg: Any) -> None:
        model = Qwen3Model(cfg)
        super().__init__(cfg, model, model.embed_tokens, llama_kv_shape(model))
