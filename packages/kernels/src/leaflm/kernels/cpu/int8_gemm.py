"""W8A8 linear layers on CPU: int8 weights per output row, int8 activations per token.

A weight is quantized once, at load time: each output row ``n`` gets a scale
``s_w[n] = max|W[n]| / 127`` and ``q_w = round(W / s_w)``. At each call each row ``m`` of ``x``
gets ``s_x[m] = max|x[m]| / 127`` and ``q_x = round(x * 127 / max|x[m]|)``; the product is
``(q_x @ q_w.T)`` in int32, times ``s_x[m] * s_w[n]``, plus the bias. `int8_linear_reference`
defines that result in PyTorch; the C kernel (``int8_gemm.c``, AVX-512 VNNI) computes the same
integers and differs only by float rounding in the epilogue.

Where the C kernels are unavailable or were built without VNNI (:func:`kernel_available`), the
weight is kept as plain ``[out, in]`` int8 and the reference computes every call: same
results, slower (an int32 matmul in PyTorch).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leaflm.kernels.cpu import build, hugepages


@dataclass(frozen=True, eq=False)
class Int8Weight:
    """An ``[out, in]`` float weight quantized for :func:`int8_linear`."""

    data: torch.Tensor  # kernel: [panels, in/4, panel_width, 4] int8; reference: [out, in] int8
    scales: torch.Tensor  # float32 per output row (kernel: [panels * panel_width], panel order)
    corr: torch.Tensor | None  # kernel: 128 * column sums, int32, like scales; reference: None
    out_features: int
    in_features: int
    panel_width: int  # 0 for the reference's plain layout
    gated: bool = False  # gate and up rows side by side per panel (see pack_weight)


@functools.cache
def panel_width() -> int:
    """Columns per panel of the VNNI kernel, or 0 where the reference runs instead."""
    lib = build.library()
    return int(lib.leaflm_int8_gemm_panel_width()) if lib is not None else 0


@functools.cache
def kernel_available() -> bool:
    """Whether the VNNI kernel runs here and agrees with the reference."""
    if not panel_width():
        return False
    g = torch.Generator().manual_seed(0)
    w, b, x = (torch.randn(s, generator=g) for s in ((70, 20), (70,), (9, 20)))
    packed = pack_weight(w)
    q, s = quantize_weight(w)
    got = int8_linear(x, packed, b)
    return bool(torch.allclose(got, int8_linear_reference(x, q, s, b), atol=1e-5, rtol=1e-5))


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``[out, in]`` int8, ``[out]`` float32 scales): symmetric, one scale per output row."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scales = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(w * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row dynamic quantization of ``[rows, in]`` activations: (int8, float32 scales)."""
    amax = x.abs().amax(dim=1)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(x * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, amax / 127.0


def int8_linear_reference(
    x: torch.Tensor, q_weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The definition: ``[..., in]`` float32 ``x`` against an int8 ``[out, in]`` weight."""
    rows = x.reshape(-1, x.shape[-1]).float()
    q_x, s_x = quantize_rows(rows)
    acc = q_x.to(torch.int32) @ q_weight.to(torch.int32).t()  # exact: |acc| < 2^31 for in < 2^17
    out = acc.float() * (s_x[:, None] * scales[None, :])
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], q_weight.shape[0])


def pack_weight(weight: torch.Tensor, gated: bool = False) -> Int8Weight:
    """Quantize an ``[out, in]`` float weight (a merged ``[gate; up]`` one if ``gated``)."""
    out_features, in_features = weight.shape
    q, s = quantize_weight(weight)
    width = panel_width()
    if gated and out_features % 2:
        raise ValueError(f"a gated weight has [gate; up] rows, got {out_features} rows")
    if not width:
        return Int8Weight(q, s, None, out_features, in_features, 0, gated)
    corr = 128 * q.to(torch.int32).sum(dim=1, dtype=torch.int32)
    k4 = -(-in_features // 4)
    q = F.pad(q, (0, 4 * k4 - in_features))
    if gated:  # each panel: width/2 gate rows, then the matching width/2 up rows
        q_p, s_p, c_p = (
            torch.cat([_panels(half, width // 2) for half in t.chunk(2)], dim=1)
            for t in (q, s, corr)
        )
        out_features //= 2
    else:
        q_p, s_p, c_p = (_panels(t, width) for t in (q, s, corr))
    data = q_p.view(q_p.shape[0], width, k4, 4).transpose(1, 2).contiguous()
    hugepages.advise_tensor(data)
    return Int8Weight(
        data, s_p.reshape(-1).contiguous(), c_p.reshape(-1).contiguous(), out_features,
        in_features, width, gated,
    )  # fmt: skip


def _panels(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``[out, ...]`` as ``[panels, rows, ...]``, zero rows added to fill the last panel."""
    panels = -(-t.shape[0] // rows)
    pad = [0, 0] * (t.dim() - 1) + [0, panels * rows - t.shape[0]]
    return F.pad(t, pad).view(panels, rows, *t.shape[1:])


def plain_int8(packed: Int8Weight) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``[out, in]`` int8 weight and its scales back from either layout (for tests)."""
    if not packed.panel_width:
        return packed.data, packed.scales
    if packed.gated:
        raise ValueError("plain_int8 reads a plain (not gated) weight")
    panels, k4, width, _ = packed.data.shape
    q = packed.data.transpose(1, 2).reshape(panels * width, k4 * 4)
    n = packed.out_features
    return q[:n, : packed.in_features], packed.scales[:n]


def int8_rows(packed: Int8Weight, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of the weight, dequantized (a tied embedding's lookup in its LM head)."""
    if packed.gated:
        raise ValueError("only a plain int8 weight has addressable rows")
    k = packed.in_features
    if not packed.panel_width:
        return packed.data[ids].float() * packed.scales[ids, None]
    width = packed.panel_width
    q = packed.data[ids // width, :, ids % width].reshape(-1, packed.data.shape[1] * 4)
    return q[:, :k].float() * packed.scales[ids, None]


def int8_linear(
    x: torch.Tensor, packed: Int8Weight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + b`` for ``[..., in]`` float32 ``x``, W8A8 (see the module docstring)."""
    if packed.gated:
        raise ValueError("a gated int8 weight goes through int8_silu_and_mul")
    if not packed.panel_width:
        return int8_linear_reference(x, packed.data, packed.scales, bias)
    return _run(x, packed, bias)


def int8_silu_and_mul(x: torch.Tensor, packed: Int8Weight) -> torch.Tensor:
    """``silu(x Wg.T) * (x Wu.T)`` for a weight packed with ``gated=True``."""
    if not packed.gated:
        raise ValueError("int8_silu_and_mul takes a weight packed with gated=True")
    if not packed.panel_width:
        from leaflm import kernels

        return kernels.silu_and_mul(int8_linear_reference(x, packed.data, packed.scales, None))
    return _run(x, packed, None)


def _run(x: torch.Tensor, packed: Int8Weight, bias: torch.Tensor | None) -> torch.Tensor:
    if x.dtype != torch.float32 or x.shape[-1] != packed.in_features:
        raise ValueError(
            f"int8 linear takes float32 [..., {packed.in_features}] inputs, "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    m, n, k = rows.shape[0], packed.out_features, packed.in_features
    out = torch.empty((m, n), dtype=torch.float32)
    if m:
        xq = torch.empty((m, packed.data.shape[1] * 4), dtype=torch.uint8)
        xs = torch.empty(m, dtype=torch.float32)
        b = None if bias is None else bias.float().contiguous()
        _kernel()(
            rows.data_ptr(), rows.stride(0), xq.data_ptr(), xs.data_ptr(),
            packed.data.data_ptr(), packed.scales.data_ptr(), packed.corr.data_ptr(),
            None if b is None else b.data_ptr(), out.data_ptr(), n, m, n, k,
            int(packed.gated), torch.get_num_threads(),
        )  # fmt: skip
    return out.view(*x.shape[:-1], n)


@functools.cache
def _kernel():
    return build.require_library().leaflm_int8_gemm
