"""Score transforms shared by the decode and prefill attention kernels (see reference.attention)."""

from __future__ import annotations

import triton
import triton.language as tl

from leaflm.kernels.triton._common import tanh


@triton.jit
def scores_block(
    q, k, q_pos, k_pos, slopes, key_ok, scale, softcap, window,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr, USE_WINDOW: tl.constexpr,
):  # fmt: skip
    """Masked float32 scores ``[M, N]`` for ``q [M, D]`` and ``k [N, D]`` (positions ``[M]``/``[N]``)."""
    if UPCAST:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision=PRECISION)
    else:
        s = tl.dot(q, tl.trans(k).to(q.dtype), input_precision=PRECISION)
    s = s * scale
    if USE_SOFTCAP:
        s = softcap * tanh(s / softcap)
    rel = k_pos[None, :] - q_pos[:, None]
    if USE_ALIBI:
        s += slopes[:, None] * rel.to(tl.float32)
    ok = key_ok[None, :] & (rel <= 0)
    if USE_WINDOW:
        ok = ok & (rel > -window)
    return tl.where(ok, s, float("-inf"))


@triton.jit
def load_kv_tile(
    kc_ptr, vc_ptr, bt_row_ptr, pos, key_ok, kvh, d, d_ok,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, PAGE: tl.constexpr,
):  # fmt: skip
    """Keys and values ``[N, D]`` of context positions ``pos`` of one KV head, gathered token by
    token through the sequence's block-table row (so a tile may span pages)."""
    blk = tl.load(bt_row_ptr + pos // PAGE, mask=key_ok, other=0).to(tl.int64)
    row = (pos % PAGE).to(tl.int64)
    kv_mask = key_ok[:, None] & d_ok[None, :]
    k = tl.load(
        kc_ptr + blk[:, None] * stride_kb + row[:, None] * stride_kt + kvh * stride_kh + d[None, :],
        mask=kv_mask, other=0.0,
    )  # fmt: skip
    v = tl.load(
        vc_ptr + blk[:, None] * stride_vb + row[:, None] * stride_vt + kvh * stride_vh + d[None, :],
        mask=kv_mask, other=0.0,
    )  # fmt: skip
    return k, v


@triton.jit
def online_softmax_update(s, v, m_i, l_i, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Fold one block of scores ``s [M, N]`` and values ``v [N, D]`` into the running state.

    Rows whose scores are all ``-inf`` so far keep ``m = -inf`` and contribute nothing.
    """
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if UPCAST:
        pv = tl.dot(p, v.to(tl.float32), input_precision=PRECISION)
    else:
        pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    acc = acc * alpha[:, None] + pv
    return m_new, l_i, acc


def precision_for(dtype) -> str:
    """fp32 attention stays IEEE on GPUs (no silent TF32); half types use tensor cores."""
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"
