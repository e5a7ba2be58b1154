"""Triton paged decode attention (flash-decoding).

Grid ``(num_seqs, num_kv_heads, num_splits)``: each program takes all query heads that share one
KV head (GQA: a KV tile is loaded once for the whole group, padded to 16 rows for ``tl.dot``)
and one slice of the context; with several splits a second kernel merges the partial
``(max, sum, acc)`` triples. Keys are gathered token by token through the block table, so any
page size works and a tile may span pages.
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
def _decode_kernel(
    q_ptr, kc_ptr, vc_ptr, bt_ptr, lens_ptr, slopes_ptr, out_ptr, part_ptr, ml_ptr,
    scale, softcap, window, partition,
    stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt, stride_os, stride_oh,
    HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, GROUP: tl.constexpr, NUM_HEADS: tl.constexpr,
    G_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
    USE_ALIBI: tl.constexpr, USE_SOFTCAP: tl.constexpr, USE_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.load(lens_ptr + seq)
    start = 0
    if USE_WINDOW:
        start = tl.maximum(length - window, 0)
    lo = start + split * partition
    hi = tl.minimum(lo + partition, length)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    heads = kvh * GROUP + g
    g_ok = g < GROUP
    d_ok = d < HEAD_DIM
    q = tl.load(
        q_ptr + seq * stride_qs + heads[:, None] * stride_qh + d[None, :],
        mask=g_ok[:, None] & d_ok[None, :], other=0.0,
    )  # fmt: skip
    slopes = tl.zeros([G_PAD], dtype=tl.float32)
    if USE_ALIBI:
        slopes = tl.load(slopes_ptr + heads, mask=g_ok, other=0.0).to(tl.float32)
    q_pos = tl.zeros([G_PAD], dtype=tl.int32) + length - 1

    m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([G_PAD], dtype=tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)
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

    if NUM_SPLITS == 1:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(
            out_ptr + seq * stride_os + heads[:, None] * stride_oh + d[None, :],
            o.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :],
        )  # fmt: skip
    else:
        # partials: [S, H, NUM_SPLITS, D_PAD] accumulators and [S, H, NUM_SPLITS, 2] (m, l)
        idx = (seq * NUM_HEADS + heads) * NUM_SPLITS + split
        tl.store(part_ptr + idx[:, None] * D_PAD + d[None, :], acc, mask=g_ok[:, None])
        tl.store(ml_ptr + idx * 2, m_i, mask=g_ok)
        tl.store(ml_ptr + idx * 2 + 1, l_i, mask=g_ok)


@triton.jit
def _reduce_kernel(
    part_ptr, ml_ptr, out_ptr, stride_os, stride_oh,
    HEAD_DIM: tl.constexpr, NUM_HEADS: tl.constexpr, D_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    sp = tl.arange(0, S_PAD)
    d = tl.arange(0, D_PAD)
    sp_ok = sp < NUM_SPLITS
    idx = (seq * NUM_HEADS + h) * NUM_SPLITS + sp
    m = tl.load(ml_ptr + idx * 2, mask=sp_ok, other=float("-inf"))
    l_ = tl.load(ml_ptr + idx * 2 + 1, mask=sp_ok, other=0.0)
    acc = tl.load(part_ptr + idx[:, None] * D_PAD + d[None, :], mask=sp_ok[:, None], other=0.0)
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp(m - m_max)
    total = tl.sum(w * l_, axis=0)
    o = tl.sum(w[:, None] * acc, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(
        out_ptr + seq * stride_os + h * stride_oh + d,
        o.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM,
    )  # fmt: skip


def _num_splits(num_seqs: int, num_kv_heads: int, max_ctx: int, device: torch.device) -> int:
    """Enough splits to fill the GPU twice over, each at least 256 tokens long."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 4  # the interpreter: still exercise the split path on long contexts
    want = triton.cdiv(2 * sms, max(1, num_seqs * num_kv_heads))
    return max(1, min(want, triton.cdiv(max_ctx, 256), 64))


def paged_attention_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """See :func:`leaflm.kernels.reference.paged_attention_decode`.

    ``num_splits`` overrides the split-K heuristic (which reads only shapes: no host sync, so
    it is safe under CUDA-graph capture).
    """
    if out is None:
        out = torch.empty_like(query)
    num_seqs, num_heads, head_dim = query.shape
    if num_seqs == 0:
        return out
    num_kv = key_cache.shape[2]
    page = key_cache.shape[1]
    group = num_heads // num_kv
    d_pad = pow2(head_dim, 16)
    block_n = 64 if d_pad <= 128 else 32
    max_ctx = block_tables.shape[1] * page
    if sliding_window:
        max_ctx = min(max_ctx, sliding_window)
    splits = num_splits or _num_splits(num_seqs, num_kv, max_ctx, query.device)
    partition = triton.cdiv(triton.cdiv(max_ctx, splits), block_n) * block_n
    splits = triton.cdiv(max_ctx, partition)
    if splits > 1:
        part = torch.empty(
            num_seqs, num_heads, splits, d_pad, dtype=torch.float32, device=query.device
        )
        ml = torch.empty(num_seqs, num_heads, splits, 2, dtype=torch.float32, device=query.device)
    else:
        part = ml = out  # unused
    _decode_kernel[(num_seqs, num_kv, splits)](
        query, key_cache, value_cache, block_tables, seq_lens,
        alibi_slopes if alibi_slopes is not None else query, out, part, ml,
        float(scale), float(softcap or 0.0), int(sliding_window or 0), partition,
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, PAGE=page, GROUP=group, NUM_HEADS=num_heads,
        G_PAD=pow2(group, 16), D_PAD=d_pad, BLOCK_N=block_n, NUM_SPLITS=splits,
        USE_ALIBI=alibi_slopes is not None, USE_SOFTCAP=bool(softcap),
        USE_WINDOW=bool(sliding_window), UPCAST=interpreting(),
        PRECISION=precision_for(query.dtype), num_warps=4, num_stages=2,
    )  # fmt: skip
    if splits > 1:
        _reduce_kernel[(num_seqs, num_heads)](
            part, ml, out, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, NUM_HEADS=num_heads, D_PAD=d_pad,
            NUM_SPLITS=splits, S_PAD=pow2(splits),
        )  # fmt: skip
    return out
