"""Triton write_kv_cache: one program per token copies its keys and values into their slot."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from leaflm.kernels.triton._common import pow2


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, kc_ptr, vc_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    H_PAD: tl.constexpr, D_PAD: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        blk = slot // BLOCK_SIZE
        off = slot % BLOCK_SIZE
        h = tl.arange(0, H_PAD)[:, None]
        d = tl.arange(0, D_PAD)[None, :]
        mask = (h < NUM_HEADS) & (d < HEAD_DIM)
        k = tl.load(key_ptr + t * stride_kt + h * stride_kh + d, mask=mask)
        v = tl.load(value_ptr + t * stride_vt + h * stride_vh + d, mask=mask)
        kc = kc_ptr + blk * stride_kcb + off * stride_kct + h * stride_kch + d
        vc = vc_ptr + blk * stride_vcb + off * stride_vct + h * stride_vch + d
        tl.store(kc, k.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(vc, v.to(vc_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """See :func:`leaflm.kernels.reference.write_kv_cache` (last dims must be contiguous)."""
    num_tokens, num_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    for t in (key, value, key_cache, value_cache):
        if t.stride(-1) != 1:
            raise ValueError("write_kv_cache needs a contiguous head_dim")
    _write_kv_kernel[(num_tokens,)](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_SIZE=key_cache.shape[1],
        H_PAD=pow2(num_heads), D_PAD=pow2(head_dim),
    )  # fmt: skip
