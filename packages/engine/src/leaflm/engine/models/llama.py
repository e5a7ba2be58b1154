"""The LLaMA family: Llama (1/2/3), Mistral (sliding window) and Qwen2 (QKV bias).

They share one implementation: GQA attention over the paged cache with RoPE (scaling from
the config), a SiLU-gated MLP, pre-norm RMSNorm blocks, and an optionally tied LM head.
Module names mirror HF's so checkpoints load by name; q/k/v and gate/up are merged into one
matmul each (`packed_modules` tells the loader where each HF tensor goes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from leaflm.engine.forward_context import ForwardContext
from leaflm.engine.layers.attention import Attention
from leaflm.engine.layers.embedding import VocabEmbedding
from leaflm.engine.layers.linear import MergedLinear, RowParallelLinear, SiluGatedLinear
from leaflm.engine.layers.norm import RMSNorm
from leaflm.engine.layers.rope_settings import rope_settings
from leaflm.engine.layers.rotary import RotaryEmbedding
from leaflm.engine.layers.sharding import arch_of, scaled, shard_heads
from leaflm.engine.models.base import LLAMA_PACKED_MODULES, ROTARY_BUFFERS, CausalLM


def layer_sliding_window(cfg: Any, layer_idx: int) -> int | None:
    """The sliding window of one layer: per `layer_types` when given, else `sliding_window`."""
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    if getattr(cfg, "use_sliding_window", True) is False:
        return None
    return window or None


class LlamaAttention(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int, rotary: RotaryEmbedding, qkv_bias: bool) -> None:
        super().__init__()
        hidden = cfg.hidden_size
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        d = self.head_dim = getattr(cfg, "head_dim", None) or hidden // heads
        shard = shard_heads(arch_of(cfg), heads, kv_heads)  # this rank's heads
        self.num_heads, self.num_kv_heads = shard.num_heads, shard.num_kv_heads
        self.q_size = self.num_heads * d
        self.kv_size = self.num_kv_heads * d
        q, kv = scaled(shard.q, d), scaled(shard.kv, d)
        self.qkv_proj = MergedLinear(
            hidden, [heads * d, kv_heads * d, kv_heads * d], bias=qkv_bias, ranges=[q, kv, kv]
        )
        self.o_proj = RowParallelLinear(
            heads * d, hidden, bias=getattr(cfg, "attention_bias", False), ranges=q
        )
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
        qkv = self.qkv_proj(hidden)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        self.rotary(positions, q, k)
        return self.o_proj(self.attn(q, k, v, ctx))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        inter, bias = cfg.intermediate_size, getattr(cfg, "mlp_bias", False)
        self.gate_up_proj = SiluGatedLinear(cfg.hidden_size, inter, bias=bias)
        self.down_proj = RowParallelLinear(inter, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm RMSNorm block; the caller builds `self_attn` so Qwen3's variant plugs in."""

    def __init__(self, cfg: Any, self_attn: nn.Module) -> None:
        super().__init__()
        eps = getattr(cfg, "rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.self_attn = self_attn
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
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


class LlamaModel(nn.Module):
    """Embedding, residual-carrying blocks, final norm; `make_attn(layer_idx)` builds attention."""

    def __init__(self, cfg: Any, make_attn: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(cfg, make_attn(i)) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, getattr(cfg, "rms_norm_eps", 1e-6))

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, ctx)
        hidden, _ = self.norm(hidden, residual)
        return hidden


def llama_kv_shape(model: LlamaModel) -> tuple[int, int, int]:
    """`CausalLM`'s `kv_shape`, read from the built attention (head_dim may be explicit)."""
    attn = model.layers[0].self_attn
    assert isinstance(attn, LlamaAttention)
    return len(model.layers), attn.num_kv_heads, attn.head_dim


class LlamaForCausalLM(CausalLM):
    """Llama/Mistral/Qwen2 causal LM: `forward` gives hidden states, `compute_logits` logits."""

    qkv_bias: ClassVar[bool] = False
    packed_modules = LLAMA_PACKED_MODULES
    ignored_weights = ROTARY_BUFFERS

    def __init__(self, cfg: Any) -> None:
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        rope = rope_settings(cfg)
        rot_dim = int(head_dim * rope.partial_rotary_factor)
        rotary = RotaryEmbedding(
            head_dim, rot_dim, cfg.max_position_embeddings, rope.base, rope.scaling, is_neox=True
        )
        qkv_bias = self.qkv_bias
        model = LlamaModel(cfg, lambda i: LlamaAttention(cfg, i, rotary, qkv_bias))
        super().__init__(cfg, model, model.embed_tokens, llama_kv_shape(model))


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True
