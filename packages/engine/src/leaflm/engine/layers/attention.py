"""Paged attention over the KV cache: write this step's K/V, then attend through block tables.

Decode rows of the batch run as one batched decode call; prefill chunks run through the
varlen prefill op. Both read K/V from the paged cache, so prefix-cache hits and earlier
chunks are attended to without recomputation.
"""

from __future__ import annotations

import torch
from torch import nn

from leaflm import kernels
from leaflm.engine.forward_context import ForwardContext


class Attention(nn.Module):
    def __init__(
        self,
        layer_idx: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
        alibi_slopes: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.softcap = softcap
        self.alibi_slopes = alibi_slopes

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """q `[T, H*D]`, k/v `[T, H_kv*D]` -> `[T, H*D]`."""
        t = q.shape[0]
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        key_cache, value_cache = ctx.kv_caches[self.layer_idx]
        meta = ctx.attn
        kernels.write_kv_cache(k, v, key_cache, value_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        nd = meta.num_decode_tokens
        opts = {
            "alibi_slopes": self.alibi_slopes,
            "sliding_window": self.sliding_window,
            "softcap": self.softcap,
        }
        if nd:
            kernels.paged_attention_decode(
                q[:nd], key_cache, value_cache, meta.decode_block_tables,
                meta.decode_seq_lens, self.scale, out=out[:nd], **opts,
            )  # fmt: skip
        if meta.num_prefill_tokens:
            kernels.paged_attention_prefill(
                q[nd:], key_cache, value_cache, meta.prefill_block_tables,
                meta.prefill_query_start_loc, meta.prefill_seq_lens, self.scale,
                out=out[nd:], max_query_len=meta.max_prefill_query_len, **opts,
            )  # fmt: skip
        return out.view(t, self.num_heads * self.head_dim)
