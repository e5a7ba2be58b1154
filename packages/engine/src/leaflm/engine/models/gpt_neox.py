"""GPT-NeoX / Pythia: parallel residual, partial rotary, per-head interleaved fused QKV.

`query_key_value` produces `[heads, 3, head_dim]` per token (q, k, v of one head next to
each other), unlike LLaMA's `[q heads | k heads | v heads]`; the split happens in `forward`.
Only the first `partial_rotary_factor * head_dim` dims of each head rotate (Pythia: 25%).
With `use_parallel_residual` a block computes `x + attn(ln1(x)) + mlp(ln2(x))`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leaflm.engine.forward_context import ForwardContext
from leaflm.engine.layers.activation import activation_fn
from leaflm.engine.layers.attention import Attention
from leaflm.engine.layers.embedding import VocabEmbedding
from leaflm.engine.layers.linear import ColumnParallelLinear, RowParallelLinear
from leaflm.engine.layers.rope_settings import rope_settings
from leaflm.engine.layers.rotary import RotaryEmbedding
from leaflm.engine.layers.sharding import arch_of, scaled, shard_heads
from leaflm.engine.models.base import ROTARY_BUFFERS, CausalLM


class GPTNeoXAttention(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        hidden, heads = cfg.hidden_size, cfg.num_attention_heads
        d = self.head_dim = hidden // heads
        shard = shard_heads(arch_of(cfg), heads, heads)
        self.num_heads = shard.num_heads
        bias = getattr(cfg, "attention_bias", True)
        # [heads, 3, head_dim] per token: a rank's heads are one contiguous run of rows.
        self.query_key_value = ColumnParallelLinear(
            hidden, 3 * hidden, bias=bias, ranges=scaled(shard.q, 3 * d)
        )
        self.dense = RowParallelLinear(hidden, hidden, bias=bias, ranges=scaled(shard.q, d))
        self.rotary = rotary
        self.attn = Attention(
            layer_idx, self.num_heads, self.num_heads, self.head_dim, self.head_dim**-0.5
        )

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        qkv = self.query_key_value(hidden).view(-1, self.num_heads, 3, self.head_dim)
        q, k, v = (qkv[:, :, i].contiguous() for i in range(3))
        self.rotary(positions, q, k)
        return self.dense(self.attn(q.flatten(1), k.flatten(1), v.flatten(1), ctx))


class GPTNeoXMLP(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, True)
        self.dense_4h_to_h = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, True)
        self.act = activation_fn(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class GPTNeoXLayer(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        eps = cfg.layer_norm_eps
        self.parallel = bool(getattr(cfg, "use_parallel_residual", True))
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)
        self.attention = GPTNeoXAttention(cfg, layer_idx, rotary)
        self.mlp = GPTNeoXMLP(cfg)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        attn = self.attention(positions, self.input_layernorm(hidden), ctx)
        if self.parallel:
            return hidden + attn + self.mlp(self.post_attention_layernorm(hidden))
        hidden = hidden + attn
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class GPTNeoXModel(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        rope = rope_settings(cfg)
        rotary = RotaryEmbedding(
            head_dim,
            int(head_dim * rope.partial_rotary_factor),
            cfg.max_position_embeddings,
            rope.base,
            rope.scaling,
            is_neox=True,
        )
        self.embed_in = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            GPTNeoXLayer(cfg, i, rotary) for i in range(cfg.num_hidden_layers)
        )
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        hidden = self.embed_in(input_ids)
        for layer in self.layers:
            hidden = layer(positions, hidden, ctx)
        return self.final_layer_norm(hidden)


class GPTNeoXForCausalLM(CausalLM):
    # Old checkpoints store rotary and causal-mask buffers next to the weights.
    ignored_weights = (*ROTARY_BUFFERS, "attention.bias", "attention.masked_bias")
    backbone_attr = "gpt_neox"
    head_attr = "embed_out"

    def __init__(self, cfg: Any) -> None:
        model = GPTNeoXModel(cfg)
        attn = model.layers[0].attention
        assert isinstance(attn, GPTNeoXAttention)  # this rank's heads size its KV cache
        kv_shape = (cfg.num_hidden_layers, attn.num_heads, attn.head_dim)
        super().__init__(cfg, model, model.embed_in, kv_shape)
