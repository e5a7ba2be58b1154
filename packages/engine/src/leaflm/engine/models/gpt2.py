"""GPT-2: learned absolute positions, pre-LayerNorm blocks, Conv1D projections, tied LM head.

HF's `Conv1D` stores weights as `[in, out]` (the transpose of `nn.Linear`); `Conv1DLinear`
keeps that layout so checkpoints load as they are, including square matrices where a
transpose could not be detected from shapes. Hub checkpoints name tensors with or without
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
from leaflm.engine.models.base import CausalLM


class Conv1DLinear(PackableLinear):
    """`y = x W + b` with `W` `[in, out]`, as HF's GPT-2 `Conv1D`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)

    def plain_weight(self) -> torch.Tensor:
        return self.weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed_forward(x, self.bias)
        return torch.addmm(self.bias, x, self.weight)


class GPT2Attention(nn.Module):
    def __init__(self, cfg: Any, layer_idx: int) -> None:
        super().__init__()
        hidden, self.num_heads = cfg.n_embd, cfg.n_head
        self.head_dim = hidden // self.num_heads
        scale = self.head_dim**-0.5 if getattr(cfg, "scale_attn_weights", True) else 1.0
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            scale /= layer_idx + 1
        self.c_attn = Conv1DLinear(hidden, 3 * hidden)
        self.c_proj = Conv1DLinear(hidden, hidden)
        self.attn = Attention(layer_idx, self.num_heads, self.num_heads, self.head_dim, scale)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.c_attn(hidden).chunk(3, dim=-1)
        return self.c_proj(self.attn(q, k, v, ctx))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        inner = getattr(cfg, "n_inner", None) or 4 * cfg.n_embd
        self.c_fc = Conv1DLinear(cfg.n_embd, inner)
        self.c_proj = Conv1DLinear(inner, cfg.n_embd)
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
        self.wpe = VocabEmbedding(cfg.n_positions, cfg.n_embd)
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
        super().__init__(cfg, model, model.wte, (cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head))

    @classmethod
    def checkpoint_name(cls, name: str) -> str | None:
        """Hub GPT-2 files omit `transformer.` and store causal-mask buffers; normalize/skip."""
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            return None
        return cls.with_backbone_prefix(name)
