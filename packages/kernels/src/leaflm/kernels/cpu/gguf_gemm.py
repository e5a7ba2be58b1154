"""CPU linear layers on GGUF-quantized weights kept in their blocks (``gguf_gemm.c``).

:func:`pack_gguf_weight` reorders a weight's file blocks once, at load time (no
dequantization); :func:`gguf_linear` multiplies activations by it with integer dot products
after quantizing the activations per call to int8 blocks of 32, as llama.cpp does.
:func:`reference_gguf_linear` defines the result (same activation quantization, float64
sums), and :func:`gguf_rows` dequantizes only the rows an embedding looks up.

Where the C kernels cannot be built (:func:`unavailable_reason` says why), :func:`gguf_linear`
runs the reference op; callers with memory to spare should dequantize to float instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from leaflm.kernels.cpu import build, gguf_blocks, graph, hugepages
from leaflm.kernels.cpu.gguf_blocks import BLOCK, block_format


@dataclass(frozen=True, eq=False)
class GGUFWeight:
    """An ``[out, in]`` weight of GGUF blocks, packed for :func:`gguf_linear`."""

    data: torch.Tensor  # uint8 [panels, in / block inputs, panel bytes per block]
    qtype: int  # ggml type number
    out_features: int
    in_features: int

    @property
    def format_name(self) -> str:
        return block_format(self.qtype).name


def pack_gguf_weight(raw, qtype: int, out_features: int, in_features: int) -> GGUFWeight:
    """Pack the raw file blocks (uint8 array or tensor) of an ``[out, in]`` weight."""
    data = gguf_blocks.pack(raw, qtype, out_features, in_features)
    hugepages.advise_tensor(data)
    return GGUFWeight(data, int(qtype), out_features, in_features)


def available() -> bool:
    """Whether the C kernel runs here (else :func:`gguf_linear` uses the reference op)."""
    return build.library() is not None


def unavailable_reason() -> str | None:
    return None if available() else build.unavailable_reason()


def vnni() -> bool:
    """Whether the C kernel was built with AVX-512 VNNI (see :func:`simd` for the others)."""
    lib = build.library()
    return bool(lib is not None and lib.leaflm_gguf_vnni())


def simd() -> str:
    """The path :func:`gguf_linear` runs: ``"AVX-512 VNNI"``, ``"AVX2"`` or ``"portable C"``
    (what the C kernel was built with), or ``"reference"`` without the C kernels."""
    lib = build.library()
    return "reference" if lib is None else lib.leaflm_gguf_simd().decode()


def gguf_linear(
    x: torch.Tensor, weight: GGUFWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + b`` for ``x`` float32 ``[..., in]``."""
    if x.dtype != torch.float32 or x.shape[-1] != weight.in_features:
        raise ValueError(
            f"a GGUF linear takes float32 [..., {weight.in_features}] inputs, "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    lib = build.library()
    if lib is None:
        return reference_gguf_linear(x, weight, bias).float()
    rows = x.reshape(-1, x.shape[-1])
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    m, n, k = rows.shape[0], weight.out_features, weight.in_features
    out = torch.empty((m, n), dtype=torch.float32)
    if m:
        rc = _gemm()(
            weight.qtype, rows.data_ptr(), rows.stride(0), weight.data.data_ptr(),
            out.data_ptr(), n, m, n, k, torch.get_num_threads(),
        )  # fmt: skip
        if rc:
            raise RuntimeError(f"leaflm_gguf_gemm failed ({rc}) on a {weight.format_name} weight")
    if bias is not None:  # no kernel for it: a CPU graph replays the add as a step
        graph.python_step(lambda: out.add_(bias))
    return out.view(*x.shape[:-1], n)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [M, K]`` as int8-valued blocks of 32: ``(q [M, K/32, 32], d [M, K/32], sum q)``.

    ``d = amax / 127`` and ``q = rint(x * (127 / amax))`` in float32, exactly as the kernel.
    """
    m, k = x.shape
    if k % BLOCK:
        raise ValueError(f"activations of {k} features are not whole blocks of {BLOCK}")
    blocks = x.float().reshape(m, k // BLOCK, BLOCK)
    amax = blocks.abs().amax(-1)
    # a true division, as in C: torch's `127.0 / amax` is a reciprocal times 127 (an ulp off)
    inv = torch.where(amax != 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(blocks * inv[..., None])
    return q, amax / 127.0, q.sum(-1)


def reference_gguf_linear(
    x: torch.Tensor, weight: GGUFWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """What :func:`gguf_linear` computes, in float64: per scale group (32 inputs, 16 for
    Q6_K) ``d_w d_x sum q_w q_x``, plus ``m_w d_x sum q_x`` per 32 where there are mins."""
    rows = x.reshape(-1, x.shape[-1])
    qx, dx, sx = quantize_activations(rows)
    all_rows = torch.arange(weight.out_features)
    qw, dw, mw = gguf_blocks.unpack_rows(weight.data, weight.qtype, all_rows)
    groups = dw.shape[1]
    size = weight.in_features // groups
    qw = qw.view(weight.out_features, groups, size).double()
    qxg = qx.reshape(rows.shape[0], groups, size).double()
    dxg = dx.double().repeat_interleave(groups // dx.shape[1], dim=1)
    dots = torch.einsum("mgk,ngk->mng", qxg, qw)
    out = (dots * dxg[:, None, :] * dw.double()[None]).sum(-1)
    if mw is not None:
        out += (sx.double() * dx.double()) @ mw.double().T
    if bias is not None:
        out += bias.double()
    return out.view(*x.shape[:-1], weight.out_features)


def gguf_rows(weight: GGUFWeight, rows: torch.Tensor) -> torch.Tensor:
    """Float32 values of weight rows ``rows`` (an embedding lookup in a quantized table)."""
    lib = build.library()
    if lib is None:
        return reference_gguf_rows(weight, rows)
    ids = rows.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty(ids.numel(), weight.in_features, dtype=torch.float32)
    rc = lib.leaflm_gguf_rows(
        weight.qtype, weight.data.data_ptr(), weight.out_features, weight.in_features,
        ids.data_ptr(), ids.numel(), out.data_ptr(),
    )  # fmt: skip
    if rc == -3:
        raise IndexError(f"a row id outside [0, {weight.out_features}) of a GGUF table")
    if rc:
        raise RuntimeError(f"leaflm_gguf_rows failed ({rc}) on a {weight.format_name} weight")
    return out.view(*rows.shape, weight.in_features)


def reference_gguf_rows(weight: GGUFWeight, rows: torch.Tensor) -> torch.Tensor:
    """What :func:`gguf_rows` computes, from the blocks' unpacked parts."""
    q, d, m = gguf_blocks.unpack_rows(weight.data, weight.qtype, rows)
    return gguf_blocks.dequantize(q, d, m).view(*rows.shape, weight.in_features)


@functools.cache
def _gemm():
    return build.require_library().leaflm_gguf_gemm
