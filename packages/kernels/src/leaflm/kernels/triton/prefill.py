"""Triton paged prefill attention: varlen, causal, over a cached prefix through block tables.

Grid ``(query tiles, num_heads, num_seqs)``. Sequence ``i``'s new tokens sit at the end of its
context (positions ``seq_len - qlen ..``), so one kernel covers full prefill, chunked prefill and
prefix-cache hits: keys before the new tokens are the cached prefix, read through the block
table like any other. Key tiles past the tile's last query position are never visited.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from leaflm.kernels.triton._common import interpreting, pow2
from leaflm.kernels.triton.attention_common import (
    load_kv_tile,
    online_softmax_update,
    precision_for,
    scores_block,
)


@triton.jit
def _prefill_kernel(
    q_ptr, kc_ptr, vc_ptr, bt_ptr, qsl_ptr, lens_ptr, slopes_ptr, out_ptr,
    scale, softcap, window,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, GROUP: tl.constexpr,
    D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_ALIBI: tl.constexpr, USE_SOFTCAP: tl.constexpr, USE_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    m0 = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1)
    seq = tl.program_id(2).to(tl.int64)
    kvh = head // GROUP
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    length = tl.load(lens_ptr + seq)
    prefix = length - q_len

    rows = m0 + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len
    q_pos = prefix + rows
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    tok = (q_start + rows).to(tl.int64)
    q = tl.load(
        q_ptr + tok[:, None] * stride_qt + head * stride_qh + d[None, :],
        mask=row_ok[:, None] & d_ok[None, :], other=0.0,
    )  # fmt: skip
    slopes = tl.zeros([BLOCK_M], dtype=tl.float32)
    if USE_ALIBI:
        slopes += tl.load(slopes_ptr + head).to(tl.float32)

    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(prefix + m0 - window + 1, 0)
    hi = tl.minimum(length, prefix + tl.minimum(m0 + BLOCK_M, q_len))  # last q pos + 1
    hi = tl.where(m0 < q_len, hi, lo)  # tiles past this sequence's queries do nothing

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        key_ok = pos < hi
        k, v = load_kv_tile(
            kc_ptr, vc_ptr, bt_ptr + seq * stride_bt, pos, key_ok, kvh, d, d_ok,
            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, PAGE,
        )  # fmt: skip
        s = scores_block(
            q, k, q_pos, pos, slopes, key_ok, scale, softcap, window,
            UPCAST, PRECISION, USE_SOFTCAP, USE_ALIBI, USE_WINDOW,
        )  # fmt: skip
        m_i, l_i, acc = online_softmax_update(s, v, m_i, l_i, acc, UPCAST, PRECISION)

    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + tok[:, None] * stride_ot + head * stride_oh + d[None, :],
        o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :],
    )  # fmt: skip


def paged_attention_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    out: torch.Tensor | None = None,
    max_query_len: int | None = None,
) -> torch.Tensor:
    """See :func:`leaflm.kernels.reference.paged_attention_prefill`.

    ``max_query_len`` sizes the grid; without it one host sync computes it.
    """
    if out is None:
        out = torch.empty_like(query)
    num_tokens, num_heads, head_dim = query.shape
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    num_kv = key_cache.shape[2]
    d_pad = pow2(head_dim, 16)
    block_m, block_n = (64, 64) if d_pad <= 128 else (32, 32)
    grid = (triton.cdiv(max_query_len, block_m), num_heads, num_seqs)
    _prefill_kernel[grid](
        query, key_cache, value_cache, block_tables, query_start_loc, seq_lens,
        alibi_slopes if alibi_slopes is not None else query, out,
        float(scale), float(softcap or 0.0), int(sliding_window or 0),
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, PAGE=key_cache.shape[1], GROUP=num_heads // num_kv,
        D_PAD=d_pad, BLOCK_M=block_m, BLOCK_N=block_n,
        USE_ALIBI=alibi_slopes is not None, USE_SOFTCAP=bool(softcap),
        USE_WINDOW=bool(sliding_window), UPCAST=interpreting(),
        PRECISION=precision_for(query.dtype), num_warps=4, num_stages=2,
    )  # fmt: skip
    return out
