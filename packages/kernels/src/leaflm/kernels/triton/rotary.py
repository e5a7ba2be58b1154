"""Triton rotary embedding, in place: one program per token rotates all its heads."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from leaflm.kernels.triton._common import pow2


@triton.jit
def _rotary_kernel(
    pos_ptr, x_ptr, cache_ptr, stride_t, stride_h, stride_c,
    NUM_HEADS: tl.constexpr, HALF: tl.constexpr, H_PAD: tl.constexpr, R_PAD: tl.constexpr,
    IS_NEOX: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    r = tl.arange(0, R_PAD)
    rmask = r < HALF
    cos = tl.load(cache_ptr + pos * stride_c + r, mask=rmask, other=1.0).to(tl.float32)[None, :]
    sin = tl.load(cache_ptr + pos * stride_c + HALF + r, mask=rmask, other=0.0).to(tl.float32)[
        None, :
    ]
    h = tl.arange(0, H_PAD)[:, None]
    mask = (h < NUM_HEADS) & rmask[None, :]
    base = x_ptr + t * stride_t + h * stride_h
    if IS_NEOX:
        p1 = base + r[None, :]
        p2 = base + HALF + r[None, :]
    else:
        p1 = base + 2 * r[None, :]
        p2 = p1 + 1
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p2, mask=mask, other=0.0).to(tl.float32)
    tl.store(p1, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(p2, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    *,
    head_dim: int | None = None,
) -> None:
    """See :func:`leaflm.kernels.reference.rotary_embedding`."""
    rot_dim = cos_sin_cache.shape[-1]
    if cos_sin_cache.stride(-1) != 1:
        cos_sin_cache = cos_sin_cache.contiguous()
    for x in (query, key):
        if x is None or x.shape[0] == 0:
            continue
        d = x.shape[-1] if x.dim() == 3 else (head_dim or rot_dim)
        v = x.view(x.shape[0], -1, d)
        if v.stride(-1) != 1:
            raise ValueError("rotary_embedding needs a contiguous head_dim")
        _rotary_kernel[(v.shape[0],)](
            positions, v, cos_sin_cache, v.stride(0), v.stride(1), cos_sin_cache.stride(0),
            NUM_HEADS=v.shape[1], HALF=rot_dim // 2, H_PAD=pow2(v.shape[1]), R_PAD=pow2(rot_dim // 2),
            IS_NEOX=is_neox,
        )  # fmt: skip
