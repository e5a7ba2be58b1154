"""GPT-2: learned absolute positions, pre-LayerNorm blocks, Conv1D projections, tied LM head.

HF's `Conv1D` stores weights as `[in, out]` (the transpose of `nn.Linear`); `Conv1DLinear`
keeps that layout so checkpoints load as they are, including square matrices where a
transpose could not be detected from shapes. Under tensor parallelism `c_attn` keeps this
rank's heads of each of its q | k | v column blocks. Hub checkpoints name tensors with or without
the `transformer.` prefix; both load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leaflm.engine.forward_context import ForwardContext
from leaflm.engine.layers.activation import activation_fn
from leaflm.engine.layers.attention import Attention
from leaflm.engine.layers.embedding import VocabEmbedding
from leaflm.engine.layers.linear import PackableLinear
from leaflm.engine.layers.sharding import Ranges, Shard, arch_of, even_ranges, scaled, shard_heads
from leaflm.engine.models.base import CausalLM


class Conv1DLinear(PackableLinear):
    """`y = x W + b` with `W` `[in, out]`, as HF's GPT-2 `Conv1D`.

    `out_ranges`: column-parallel (this rank's output columns); `in_ranges`: row-parallel
    (its input rows, partial outputs summed over the ranks).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        out_ranges: Ranges | None = None,
        in_ranges: Ranges | None = None,
    ) -> None:
        super().__init__()
        if out_ranges is not None:
            out = Shard(1, out_ranges)
            out_features = out.size
            self.shards = {("weight", -1): out, ("bias", -1): Shard(0, out_ranges)}
        if in_ranges is not None:
            rows = Shard(0, in_ranges)
            self.reduce_output = rows.size != in_features
            in_features = rows.size
            self.shards = {("weight", -1): rows}
        self.weight = nn.Parameter(torch.empty(in_features, out_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)

    def plain_weight(self) -> torch.Tensor:
        return self.weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_weight(x, self.local_bias(self.bias))


class GPT2Attention(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int) -> None:
        super().__init__()
        hidden = cfg.n_embd
        d = self.head_dim = hidden // cfg.n_head
        shard = shard_heads(arch_of(cfg), cfg.n_head, cfg.n_head)
        self.num_heads = shard.num_heads
        scale = self.head_dim**-0.5 if getattr(cfg, "scale_attn_weights", True) else 1.0
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            scale /= layer_idx + 1
        q = scaled(shard.q, d)
        qkv = q + scaled(shard.q, d, hidden) + scaled(shard.q, d, 2 * hidden)
        self.c_attn = Conv1DLinear(hidden, 3 * hidden, out_ranges=qkv)
        self.c_proj = Conv1DLinear(hidden, hidden, in_ranges=q)
        self.attn = Attention(layer_idx, self.num_heads, self.num_heads, self.head_dim, scale)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.c_attn(hidden).chunk(3, dim=-1)
        return self.c_proj(self.attn(q, k, v, ctx))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        inner = getattr(cfg, "n_inner", None) or 4 * cfg.n_embd
        cols = even_ranges(inner, "MLP size")
        self.c_fc = Conv1DLinear(cfg.n_embd, inner, out_ranges=cols)
        self.c_proj = Conv1DLinear(inner, cfg.n_embd, in_ranges=cols)
        self.act = activation_fn(cfg.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int) -> None:
        super().__init__()
        eps = cfg.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=eps)
        self.attn = GPT2Attention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden), ctx)
        return hidden + self.mlp(self.ln_2(hidden))


class GPT2Model(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.wte = VocabEmbedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = VocabEmbedding(cfg.n_positions, cfg.n_embd, parallel=False)
        self.h = nn.ModuleList(GPT2Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        hidden = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            hidden = block(hidden, ctx)
        return self.ln_f(hidden)


class GPT2LMHeadModel(CausalLM):
    backbone_attr = "transformer"
    tie_by_default = True

    def __init__(self, cfg: Any) -> None:
        if getattr(cfg, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention (an encoder-decoder) is not supported")
        model = GPT2Model(cfg)
        attn = model.h[0].attn
        assert isinstance(attn, GPT2Attention)  # this rank's heads size its KV cache
        super().__init__(cfg, model, model.wte, (cfg.n_layer, attn.num_heads, attn.head_dim))

    @classmethod
    def checkpoint_name(cls, name: str) -> str | None:
        """Hub GPT-2 files omit `transformer.` and store causal-mask buffers; normalize/skip."""
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            return None
        return cls.with_backbone_prefix(name)
