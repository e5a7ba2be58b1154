"""BLOOM: ALiBi instead of positions, a LayerNorm right after the embedding, fused QKV.

Like GPT-NeoX, `query_key_value` is laid out `[heads, 3, head_dim]`. ALiBi slopes go to the
paged-attention kernels, which add `slope * (j - p)` to each score (softmax-equivalent to
BLOOM's `slope * j`). `apply_residual_connection_post_layernorm` picks whether the residual
stream carries the normed or the raw hidden states, as in HF.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leaflm.engine.forward_context import ForwardContext
from leaflm.engine.layers.alibi import alibi_slopes
from leaflm.engine.layers.attention import Attention
from leaflm.engine.layers.embedding import VocabEmbedding
from leaflm.engine.layers.linear import ColumnParallelLinear, RowParallelLinear
from leaflm.engine.layers.sharding import HeadShard, arch_of, scaled, shard_heads
from leaflm.engine.models.base import CausalLM


class BloomAttention(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int, slopes: torch.Tensor, shard: HeadShard) -> None:
        super().__init__()
        hidden = cfg.hidden_size
        d = self.head_dim = hidden // cfg.n_head
        self.num_heads = shard.num_heads
        # [heads, 3, head_dim] per token: a rank's heads are one contiguous run of rows.
        self.query_key_value = ColumnParallelLinear(
            hidden, 3 * hidden, bias=True, ranges=scaled(shard.q, 3 * d)
        )
        self.dense = RowParallelLinear(hidden, hidden, bias=True, ranges=scaled(shard.q, d))
        self.attn = Attention(
            layer_idx,
            self.num_heads,
            self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            alibi_slopes=slopes,
        )

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qkv = self.query_key_value(hidden).view(-1, self.num_heads, 3, self.head_dim)
        q, k, v = (qkv[:, :, i].reshape(qkv.shape[0], -1) for i in range(3))
        return self.dense(self.attn(q, k, v, ctx))


class BloomMLP(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(hidden, 4 * hidden, bias=True)
        self.dense_4h_to_h = RowParallelLinear(4 * hidden, hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))


class BloomBlock(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int, slopes: torch.Tensor, shard: HeadShard) -> None:
        super().__init__()
        eps = cfg.layer_norm_epsilon
        self.post_ln_residual = bool(
            getattr(cfg, "apply_residual_connection_post_layernorm", False)
        )
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)
        self.self_attention = BloomAttention(cfg, layer_idx, slopes, shard)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)
        self.mlp = BloomMLP(cfg.hidden_size)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        normed = self.input_layernorm(hidden)
        residual = normed if self.post_ln_residual else hidden
        hidden = self.self_attention(normed, ctx) + residual
        normed = self.post_attention_layernorm(hidden)
        residual = normed if self.post_ln_residual else hidden
        return self.mlp(normed) + residual


class BloomModel(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        eps = cfg.layer_norm_epsilon
        self.word_embeddings = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.word_embeddings_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)
        shard = shard_heads(arch_of(cfg), cfg.n_head, cfg.n_head)
        ((lo, hi),) = shard.q
        slopes = alibi_slopes(cfg.n_head)[lo:hi].contiguous()  # this rank's heads' slopes
        self.register_buffer("slopes", slopes, persistent=False)
        self.h = nn.ModuleList(BloomBlock(cfg, i, slopes, shard) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.hidden_size, eps=eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """`positions` is unused (ALiBi), taken so every backbone has one signature."""
        hidden = self.word_embeddings_layernorm(self.word_embeddings(input_ids))
        for block in self.h:
            hidden = block(hidden, ctx)
        return self.ln_f(hidden)


class BloomForCausalLM(CausalLM):
    backbone_attr = "transformer"
    tie_by_default = True

    def __init__(self, cfg: Any) -> None:
        model = BloomModel(cfg)
        attn = model.h[0].self_attention
        assert isinstance(attn, BloomAttention)  # this rank's heads size its KV cache
        kv_shape = (cfg.n_layer, attn.num_heads, attn.head_dim)
        super().__init__(cfg, model, model.word_embeddings, kv_shape)

    @classmethod
    def checkpoint_name(cls, name: str) -> str:
        """Hub BLOOM files name tensors without the `transformer.` prefix."""
        return cls.with_backbone_prefix(name)
