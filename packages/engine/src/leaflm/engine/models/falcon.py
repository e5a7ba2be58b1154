"""Falcon: multi-query or grouped KV attention, parallel attention + MLP, RoPE or ALiBi.

Three fused-QKV layouts, as HF's `FalconAttention._split_heads`:
- new decoder architecture (40B/180B): per KV group `[q_0 .. q_{g-1}, k, v]`;
- multi-query (7B): `[q heads | k | v]` with one KV head;
- neither: per head `[q, k, v]`.
Blocks are parallel (`x + attn(ln(x)) + mlp(ln'(x))`, one or two layernorms) or sequential.
ALiBi (Falcon-RW) slopes are rounded to bfloat16 and scaled by 1/sqrt(head_dim), as HF does.
Old `RWForCausalLM` checkpoints (config model_type "RefinedWebModel"/"RefinedWeb", keys
`n_head`, `n_layer`, `n_head_kv`) load through `legacy_config`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leaflm.engine.forward_context import ForwardContext
from leaflm.engine.layers.activation import activation_fn
from leaflm.engine.layers.alibi import alibi_slopes
from leaflm.engine.layers.attention import Attention
from leaflm.engine.layers.embedding import VocabEmbedding
from leaflm.engine.layers.linear import ColumnParallelLinear, RowParallelLinear
from leaflm.engine.layers.rope_settings import rope_settings
from leaflm.engine.layers.rotary import RotaryEmbedding
from leaflm.engine.layers.sharding import HeadShard, Ranges, arch_of, scaled, shard_heads
from leaflm.engine.models.base import ROTARY_BUFFERS, CausalLM


def _num_kv_heads(cfg: Any) -> int:
    if cfg.new_decoder_architecture:
        return cfg.num_kv_heads
    return 1 if cfg.multi_query else cfg.num_attention_heads


def _num_parallel_norms(cfg: Any) -> int:
    if not cfg.parallel_attn:
        return 0
    n = getattr(cfg, "num_ln_in_parallel_attn", None)
    return n if n is not None else (2 if cfg.new_decoder_architecture else 1)


def head_shard(cfg: Any) -> HeadShard:
    return shard_heads(arch_of(cfg), cfg.num_attention_heads, _num_kv_heads(cfg))


def _qkv_rows(cfg: Any, shard: HeadShard, d: int) -> Ranges:
    """This rank's rows of the fused QKV weight, in a layout `_split` reads as it is.

    A rank's slice of a new-architecture KV group (when KV heads < ranks) is itself one group:
    its query heads, then the group's k and v.
    """
    heads, kv_heads = cfg.num_attention_heads, _num_kv_heads(cfg)
    if cfg.new_decoder_architecture:
        g = heads // kv_heads + 2  # rows per group: its query heads, k, v
        (k0, k1), (q0, q1) = shard.kv[0], shard.q[0]
        if q1 - q0 >= (k1 - k0) * (g - 2):  # whole groups
            return scaled(shard.kv, g * d)
        base = k0 * g
        q_in = q0 - k0 * (g - 2)
        return ((base + q_in) * d, (base + q_in + q1 - q0) * d), (
            (base + g - 2) * d,
            (base + g) * d,
        )
    if cfg.multi_query:
        return (*scaled(shard.q, d), (heads * d, (heads + 2) * d))
    return scaled(shard.q, 3 * d)  # per head [q, k, v]


class FalconAttention(nn.Module):
    def __init__(
        self, cfg: Any, layer_idx: int, rotary: RotaryEmbedding | None, slopes: torch.Tensor | None
    ) -> None:
        super().__init__()
        hidden, heads = cfg.hidden_size, cfg.num_attention_heads
        d = self.head_dim = hidden // heads
        shard = head_shard(cfg)
        self.num_heads, self.num_kv_heads = shard.num_heads, shard.num_kv_heads
        self.new_arch, self.multi_query = cfg.new_decoder_architecture, cfg.multi_query
        qkv_out = (heads + 2 * _num_kv_heads(cfg)) * d
        self.query_key_value = ColumnParallelLinear(
            hidden, qkv_out, bias=cfg.bias, ranges=_qkv_rows(cfg, shard, d)
        )
        self.dense = RowParallelLinear(hidden, hidden, bias=cfg.bias, ranges=scaled(shard.q, d))
        self.rotary = rotary
        self.attn = Attention(
            layer_idx,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.head_dim**-0.5,
            alibi_slopes=slopes,
        )

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t, d = qkv.shape[0], self.head_dim
        if self.new_arch:
            g = qkv.view(t, self.num_kv_heads, self.num_heads // self.num_kv_heads + 2, d)
            return (
                g[:, :, :-2].reshape(t, -1),
                g[:, :, -2].reshape(t, -1),
                g[:, :, -1].reshape(t, -1),
            )
        if self.multi_query:
            return qkv.split([self.num_heads * d, d, d], dim=-1)
        g = qkv.view(t, self.num_heads, 3, d)
        return g[:, :, 0].reshape(t, -1), g[:, :, 1].reshape(t, -1), g[:, :, 2].reshape(t, -1)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        q, k, v = self._split(self.query_key_value(hidden))
        if self.rotary is not None:
            q, k = q.contiguous(), k.contiguous()
            self.rotary(positions, q, k)
        return self.dense(self.attn(q, k, v, ctx))


class FalconMLP(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        ffn = getattr(cfg, "ffn_hidden_size", None) or 4 * cfg.hidden_size
        self.dense_h_to_4h = ColumnParallelLinear(cfg.hidden_size, ffn, bias=cfg.bias)
        self.dense_4h_to_h = RowParallelLinear(ffn, cfg.hidden_size, bias=cfg.bias)
        self.act = activation_fn(getattr(cfg, "activation", "gelu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class FalconDecoderLayer(nn.Module):
    def __init__(
        self, cfg: Any, layer_idx: int, rotary: RotaryEmbedding | None, slopes: torch.Tensor | None
    ) -> None:
        super().__init__()
        hidden, eps = cfg.hidden_size, cfg.layer_norm_epsilon
        self.self_attention = FalconAttention(cfg, layer_idx, rotary, slopes)
        self.mlp = FalconMLP(cfg)
        self.norms = _num_parallel_norms(cfg)
        if self.norms == 2:
            self.ln_attn = nn.LayerNorm(hidden, eps=eps)
            self.ln_mlp = nn.LayerNorm(hidden, eps=eps)
        else:
            self.input_layernorm = nn.LayerNorm(hidden, eps=eps)
        if self.norms == 0:
            self.post_attention_layernorm = nn.LayerNorm(hidden, eps=eps)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        if self.norms == 2:
            attn_in, mlp_in = self.ln_attn(hidden), self.ln_mlp(hidden)
        else:
            attn_in = mlp_in = self.input_layernorm(hidden)
        attn = self.self_attention(positions, attn_in, ctx)
        if self.norms == 0:  # sequential block
            hidden = hidden + attn
            return hidden + self.mlp(self.post_attention_layernorm(hidden))
        return hidden + (self.mlp(mlp_in) + attn)


class FalconModel(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        if cfg.new_decoder_architecture and not cfg.parallel_attn:
            raise ValueError("Falcon's new decoder architecture needs parallel_attn=True (as HF)")
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        rotary, slopes = None, None
        if cfg.alibi:
            # HF builds ALiBi in bfloat16 and divides it by sqrt(head_dim) before the softmax.
            slopes = alibi_slopes(cfg.num_attention_heads).bfloat16().float() * head_dim**-0.5
            ((lo, hi),) = head_shard(cfg).q
            slopes = slopes[lo:hi].contiguous()  # this rank's heads' slopes
            self.register_buffer("slopes", slopes, persistent=False)
        else:
            rope = rope_settings(cfg)
            rotary = RotaryEmbedding(
                head_dim, head_dim, cfg.max_position_embeddings, rope.base, rope.scaling, True
            )
        self.word_embeddings = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.h = nn.ModuleList(
            FalconDecoderLayer(cfg, i, rotary, slopes) for i in range(cfg.num_hidden_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        hidden = self.word_embeddings(input_ids)
        for layer in self.h:
            hidden = layer(positions, hidden, ctx)
        return self.ln_f(hidden)


class FalconForCausalLM(CausalLM):
    ignored_weights = ROTARY_BUFFERS
    backbone_attr = "transformer"
    tie_by_default = True

    def __init__(self, cfg: Any) -> None:
        model = FalconModel(cfg)
        attn = model.h[0].self_attention
        assert isinstance(attn, FalconAttention)  # this rank's heads size its KV cache
        kv_shape = (cfg.num_hidden_layers, attn.num_kv_heads, attn.head_dim)
        super().__init__(cfg, model, model.word_embeddings, kv_shape)


_LEGACY_KEYS = {
    "n_head": "num_attention_heads",
    "n_layer": "num_hidden_layers",
    "n_head_kv": "num_kv_heads",
}


def legacy_config(raw: dict[str, Any]) -> Any:
    """A `FalconConfig` from an old `RWForCausalLM` config.json (model_type RefinedWeb*)."""
    from transformers import FalconConfig

    values = {
        _LEGACY_KEYS.get(k, k): v for k, v in raw.items() if k not in ("auto_map", "model_type")
    }
    values["new_decoder_architecture"] = raw.get("model_type") == "RefinedWeb"
    values.setdefault("architectures", ["FalconForCausalLM"])
    if "rope_theta" not in values and not values.get("alibi", False):
        values["rope_theta"] = 10000.0  # RW checkpoints predate the key; their code used 10000
    return FalconConfig(**values)
