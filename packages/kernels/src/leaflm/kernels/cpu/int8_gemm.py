"""W8A8 linear layers on CPU: int8 weights per output row, int8 activations per token.

A weight is quantized once, at load time: each output row ``n`` gets a scale
``s_w[n] = max|W[n]| / 127`` and ``q_w = round(W / s_w)``. At each call each row of ``x`` is
quantized the same way, one scale per ``block`` consecutive values (``ACT_BLOCK`` = 32, as
llama.cpp's Q8_0 activations; ``block=None``: one scale for the whole row). The product is
``sum_b s_x[m, b] * (q_x[m, b] @ q_w[:, b].T)``, each block's dot product exact in int32, times
``s_w[n]``, plus the bias. `int8_linear_reference` defines that result in PyTorch; the C
kernel (``int8_gemm.c``: AVX-512 VNNI, or AVX2 in ``int8_gemm_avx2.h``, see :func:`simd`)
computes the same integers and differs only by float rounding (float64 here, where the kernel
multiply-adds in float32; the two C paths give the same bits).

Why blocks: on SmolLM2-135M a single scale per token put the mean next-token KL against
float32 at 0.036 nats (top-1 agreement 88.5%): the RMSNorm outputs that feed q/k/v and
gate/up have a few channels far larger than the rest, which then take the whole int8 range.
Blocks of 32 give 0.007 nats (see ``leaflm.engine.quant_eval``) for ~1/8 more work per MAC.

Where the C kernels are unavailable or were built with neither AVX-512 VNNI nor AVX2 + FMA
(:func:`kernel_available`), the weight is kept as plain ``[out, in]`` int8 and the reference
computes every call: same results, 10-70x slower than even the AVX2 kernel (int32 matmuls
in PyTorch).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leaflm.kernels.cpu import build, hugepages

#: activation values per scale (llama.cpp's Q8_0 block)
ACT_BLOCK = 32


@dataclass(frozen=True, eq=False)
class Int8Weight:
    """An ``[out, in]`` float weight quantized for :func:`int8_linear`."""

    data: torch.Tensor  # kernel: [panels, in_padded/4, panel_width, 4] uint8 (q + 128);
    # reference: [out, in] int8
    scales: torch.Tensor  # float32 per output row (kernel: [panels * panel_width], panel order)
    out_features: int
    in_features: int
    block: int  # activation values per scale (a multiple of 4; the padded in_features if None)
    panel_width: int  # 0 for the reference's plain layout
    gated: bool = False  # gate and up rows side by side per panel (see pack_weight)


@functools.cache
def panel_width() -> int:
    """Columns per panel of the C kernel (64 for AVX-512 VNNI, 16 for AVX2), or 0 where the
    reference runs instead."""
    lib = build.library()
    return int(lib.leaflm_int8_gemm_panel_width()) if lib is not None else 0


def simd() -> str:
    """The path :func:`int8_linear` runs: ``"AVX-512 VNNI"`` or ``"AVX2"`` (what the C kernel
    was built with), or ``"reference"`` (no kernel here, or it disagrees with the reference)."""
    if not kernel_available():
        return "reference"
    return build.require_library().leaflm_int8_gemm_simd().decode()


@functools.cache
def kernel_available() -> bool:
    """Whether the C kernel (VNNI or AVX2) runs here and agrees with the reference."""
    if not panel_width():
        return False
    g = torch.Generator().manual_seed(0)
    w, b, x = (torch.randn(s, generator=g) for s in ((70, 20), (70,), (9, 20)))
    packed = _pack(w, False, 8, None, panel_width())
    q, s = quantize_weight(w)
    ref = int8_linear_reference(x, q, s, b, block=8)
    return bool(torch.allclose(int8_linear(x, packed, b), ref, atol=1e-5, rtol=1e-5))


def quantize_weight(
    weight: torch.Tensor, row_amax: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``[out, in]`` int8, ``[out]`` float32 scales): symmetric, one scale per output row.

    ``row_amax`` replaces each row's ``max|W[n]|`` (a tensor-parallel shard of the input
    columns uses the whole row's, so its int8 values are the unsharded weight's)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1) if row_amax is None else row_amax.float()
    scales = amax / 127.0
    inv = _inverse_scale(amax)
    q = torch.round(w * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def _inverse_scale(amax: torch.Tensor) -> torch.Tensor:
    """``127 / amax`` (0 where amax is 0), correctly rounded as the C kernel's division is
    (PyTorch computes ``127.0 / tensor`` as a reciprocal times 127: one ulp off at times,
    enough to round a value on the other side of .5)."""
    inv = torch.full_like(amax, 127.0) / amax
    return torch.where(amax > 0, inv, torch.zeros_like(amax))


def block_size(in_features: int, block: int | None) -> int:
    """Activation values per scale: ``block``, or the whole row (rounded up to 4) for None."""
    if block is None:
        return -(-in_features // 4) * 4
    if block <= 0 or block % 4:
        raise ValueError(f"the activation block must be a positive multiple of 4, got {block}")
    return block


def quantize_rows(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[rows, in]`` activations as int8 ``[rows, blocks * block]`` (zero-padded) and float32
    ``[rows, blocks]`` scales, one per ``block`` values of a row."""
    rows, k = x.shape
    blocks = -(-k // block)
    v = F.pad(x, (0, blocks * block - k)).view(rows, blocks, block)
    amax = v.abs().amax(dim=-1)
    inv = _inverse_scale(amax)
    q = torch.round(v * inv[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.view(rows, blocks * block), amax / 127.0


def int8_linear_reference(
    x: torch.Tensor,
    q_weight: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    block: int | None = ACT_BLOCK,
) -> torch.Tensor:
    """The definition: ``[..., in]`` float32 ``x`` against an int8 ``[out, in]`` weight."""
    k = x.shape[-1]
    block = block_size(k, block)
    q_x, s_x = quantize_rows(x.reshape(-1, k).float(), block)
    q_w = F.pad(q_weight, (0, q_x.shape[1] - k)).to(torch.int32)
    out = torch.zeros(q_x.shape[0], q_weight.shape[0])
    for b in range(s_x.shape[1]):
        cols = slice(b * block, (b + 1) * block)
        acc = q_x[:, cols].to(torch.int32) @ q_w[:, cols].t()  # exact in int32
        # out + acc * s rounded once, as the kernel's fused multiply-add (exact in float64)
        prod = acc.float().double() * s_x[:, b : b + 1].double()
        out = (out.double() + prod).float()
    out *= scales
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], q_weight.shape[0])


def pack_weight(
    weight: torch.Tensor,
    gated: bool = False,
    block: int | None = ACT_BLOCK,
    row_amax: torch.Tensor | None = None,
) -> Int8Weight:
    """Quantize an ``[out, in]`` float weight (a merged ``[gate; up]`` one if ``gated``) for
    activations quantized in blocks of ``block`` values (None: whole rows); ``row_amax``: see
    :func:`quantize_weight`."""
    return _pack(weight, gated, block, row_amax, panel_width() if kernel_available() else 0)


def _pack(
    weight: torch.Tensor,
    gated: bool,
    block: int | None,
    row_amax: torch.Tensor | None,
    width: int,
) -> Int8Weight:
    out_features, in_features = weight.shape
    if gated and out_features % 2:
        raise ValueError(f"a gated weight has [gate; up] rows, got {out_features} rows")
    block = block_size(in_features, block)
    q, s = quantize_weight(weight, row_amax)
    if not width:
        return Int8Weight(q, s, out_features, in_features, block, 0, gated)
    padded = -(-in_features // block) * block
    u = (F.pad(q, (0, padded - in_features)).to(torch.int16) + 128).to(torch.uint8)
    if gated:  # each panel: width/2 gate rows, then the matching width/2 up rows
        u_p, s_p = (
            torch.cat([_panels(half, width // 2) for half in t.chunk(2)], dim=1) for t in (u, s)
        )
        out_features //= 2
    else:
        u_p, s_p = _panels(u, width), _panels(s, width)
    data = u_p.view(u_p.shape[0], width, padded // 4, 4).transpose(1, 2).contiguous()
    hugepages.advise_tensor(data)
    scales = s_p.reshape(-1).contiguous()
    return Int8Weight(data, scales, out_features, in_features, block, width, gated)


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
    u = packed.data.transpose(1, 2).reshape(panels * width, k4 * 4)
    n = packed.out_features
    q = (u[:n, : packed.in_features].to(torch.int16) - 128).to(torch.int8)
    return q, packed.scales[:n]


def int8_rows(packed: Int8Weight, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of the weight, dequantized (a tied embedding's lookup in its LM head)."""
    if packed.gated:
        raise ValueError("only a plain int8 weight has addressable rows")
    k = packed.in_features
    if not packed.panel_width:
        return packed.data[ids].float() * packed.scales[ids, None]
    width = packed.panel_width
    u = packed.data[ids // width, :, ids % width].reshape(-1, packed.data.shape[1] * 4)
    return (u[:, :k].float() - 128.0) * packed.scales[ids, None]


def int8_linear(
    x: torch.Tensor, packed: Int8Weight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + b`` for ``[..., in]`` float32 ``x``, W8A8 (see the module docstring)."""
    if packed.gated:
        raise ValueError("a gated int8 weight goes through int8_silu_and_mul")
    if not packed.panel_width:
        return int8_linear_reference(x, packed.data, packed.scales, bias, packed.block)
    return _run(x, packed, bias)


def int8_silu_and_mul(x: torch.Tensor, packed: Int8Weight) -> torch.Tensor:
    """``silu(x Wg.T) * (x Wu.T)`` for a weight packed with ``gated=True``."""
    if not packed.gated:
        raise ValueError("int8_silu_and_mul takes a weight packed with gated=True")
    if not packed.panel_width:
        from leaflm import kernels

        ref = int8_linear_reference(x, packed.data, packed.scales, None, packed.block)
        return kernels.silu_and_mul(ref)
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
        padded = packed.data.shape[1] * 4
        blocks = padded // packed.block
        # one scratch buffer: the quantized rows, then their scales and sums (4-byte aligned)
        q_bytes = -(-m * padded // 64) * 64
        scratch = torch.empty(q_bytes + 8 * m * blocks, dtype=torch.uint8)
        xq = scratch.data_ptr()
        b = None if bias is None else bias.float().contiguous()
        _kernel()(
            rows.data_ptr(), rows.stride(0), xq, xq + q_bytes, xq + q_bytes + 4 * m * blocks,
            packed.data.data_ptr(), packed.scales.data_ptr(),
            None if b is None else b.data_ptr(), out.data_ptr(), n, m, n, k, packed.block,
            int(packed.gated), torch.get_num_threads(),
        )  # fmt: skip
    return out.view(*x.shape[:-1], n)


@functools.cache
def _kernel():
    return build.require_library().leaflm_int8_gemm
