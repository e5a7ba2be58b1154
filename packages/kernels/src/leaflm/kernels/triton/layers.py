"""Triton RMSNorm(+residual) and gated activations (SiLU/GELU-and-mul): one row per program."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from leaflm.kernels.triton._common import pow2, tanh


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, new_res_ptr, eps,
    stride_x, stride_r, stride_o, stride_nr,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(
            new_res_ptr + row * stride_nr + cols, x.to(new_res_ptr.dtype.element_ty), mask=mask
        )
    inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (x * inv * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """See :func:`leaflm.kernels.reference.rms_norm`."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    out = torch.empty_like(x2)
    res2 = residual.reshape(-1, n) if residual is not None else x2
    new_res = torch.empty_like(x2) if residual is not None else out
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, res2, weight, out, new_res, eps,
            x2.stride(0), res2.stride(0), out.stride(0), new_res.stride(0),
            N=n, BLOCK=pow2(n), HAS_RES=residual is not None,
        )  # fmt: skip
    if residual is None:
        return out.view(x.shape)
    return out.view(x.shape), new_res.view(x.shape)


@triton.jit
def _act_and_mul_kernel(
    x_ptr, out_ptr, stride_x, stride_o, D: tl.constexpr, BLOCK: tl.constexpr, ACT: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    a = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + row * stride_x + D + cols, mask=mask, other=0.0).to(tl.float32)
    if ACT == 0:  # silu
        g = a / (1.0 + tl.exp(-a))
    elif ACT == 1:  # gelu, tanh approximation
        g = 0.5 * a * (1.0 + tanh(0.7978845608028654 * (a + 0.044715 * a * a * a)))
    else:  # exact gelu
        g = 0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))
    tl.store(out_ptr + row * stride_o + cols, (g * b).to(out_ptr.dtype.element_ty), mask=mask)


def _act_and_mul(x: torch.Tensor, act: int) -> torch.Tensor:
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape[0], d, dtype=x.dtype, device=x.device)
    block = min(1024, pow2(d))
    if x2.shape[0]:
        grid = (x2.shape[0], triton.cdiv(d, block))
        _act_and_mul_kernel[grid](x2, out, x2.stride(0), out.stride(0), D=d, BLOCK=block, ACT=act)
    return out.view(*x.shape[:-1], d)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """See :func:`leaflm.kernels.reference.silu_and_mul`."""
    return _act_and_mul(x, 0)


def gelu_and_mul(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """See :func:`leaflm.kernels.reference.gelu_and_mul`."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"approximate must be 'tanh' or 'none', got {approximate!r}")
    return _act_and_mul(x, 1 if approximate == "tanh" else 2)
