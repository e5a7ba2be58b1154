"""CPU linear layers on weights packed once, at load time.

``F.linear`` on CPU calls MKL's sgemm, which re-packs the weight on every call: with a few
dozen rows (a decode batch) that repacking is a large share of the work. So each float32
weight is packed once after loading, into one of two layouts:

- leaflm's own panels (``gemm.c``), where the C kernels are built with AVX-512: the threads
  take panels as they come free and stream each from memory once for all rows. A SmolLM-135M decode step's 120 layer
  GEMMs (64 rows, weights cold) took ~65 ms against ~78 ms with oneDNN's packed matmul, and
  a 2048-row prefill chunk ~1.95 s against ~2.0 s, on the 2-core dev machine.
- oneDNN's blocked layout otherwise (``mkldnn::_reorder_linear_weight`` /
  ``mkldnn::_linear_pointwise``, the ops PyTorch's Inductor uses for frozen CPU linears),
  ~1.5x faster than ``F.linear`` for decode batches.

``LEAFLM_CPU_GEMM=onednn`` picks oneDNN even where leaflm's kernel is available (to compare).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leaflm.kernels.cpu import build, hugepages, layers

#: the batch size oneDNN picks its packed layout for (it serves every batch size)
BATCH_HINT = 64
GEMM_VAR = "LEAFLM_CPU_GEMM"


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """An ``[out, in]`` float32 weight packed for :func:`packed_linear`."""

    data: torch.Tensor  # leaflm: [panels, in, panel_width]; oneDNN: its opaque tensor
    out_features: int
    in_features: int
    panel_width: int  # 0 for oneDNN's layout
    gated: bool = False  # gate and up rows side by side per panel (see pack_gated_weight)


@functools.cache
def panel_width() -> int:
    """Columns per panel of leaflm's GEMM, or 0 where oneDNN packs instead."""
    if os.environ.get(GEMM_VAR, "").strip().lower() == "onednn":
        return 0
    lib = build.library()
    return int(lib.leaflm_gemm_panel_width()) if lib is not None else 0


def linear_backend() -> str:
    """Which GEMM a float32 CPU engine's linear layers use here: leaflm, oneDNN or F.linear."""
    if not packing_available():
        return "F.linear"
    return "leaflm" if panel_width() else "oneDNN"


@functools.cache
def packing_available() -> bool:
    """Whether weights can be packed here, and the packed GEMM agrees with F.linear."""
    if build.disabled():
        return False
    if not panel_width() and not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        w, b, x = (torch.randn(s, generator=g) for s in ((56, 16), (56,), (9, 16)))
        got = packed_linear(x, pack_weight(w), b)
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.allclose(got, F.linear(x, w, b), atol=1e-5, rtol=1e-5))


def pack_weight(weight: torch.Tensor) -> PackedWeight:
    """Pack an ``[out, in]`` float32 CPU weight (a copy: the caller may free the original)."""
    out_features, in_features = weight.shape
    width = panel_width()
    w = weight.detach()
    if width:  # every decode step streams all weights: huge pages spare the TLB
        data = _huge_copy(_panels(w, width).transpose(1, 2))
    else:
        data = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), BATCH_HINT)
        hugepages.advise_tensor(data)
    return PackedWeight(data, out_features, in_features, width)


def pack_gated_weight(weight: torch.Tensor) -> PackedWeight | None:
    """Pack a merged ``[gate; up]`` weight for :func:`packed_silu_and_mul`.

    None where leaflm's GEMM is not available (callers then pack it as a plain linear).
    """
    width = panel_width()
    rows, in_features = weight.shape
    if not width or rows % 2:
        return None
    gate, up = (_panels(w, width // 2) for w in weight.detach().chunk(2))
    data = _huge_copy(torch.cat([gate, up], dim=1).transpose(1, 2))
    return PackedWeight(data, rows // 2, in_features, width, gated=True)


def packed_rows(packed: PackedWeight, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of the original ``[out, in]`` weight, read back from leaflm's panels.

    Lets a tied embedding look tokens up in its LM head's packed copy instead of keeping a
    second, plain copy of the table (SmolLM2-135M: 113 MB).
    """
    if not packed.panel_width or packed.gated:
        raise ValueError("only a plain leaflm-packed weight has addressable rows")
    return layers.embedding(
        rows, packed.data, panel_width=packed.panel_width, num_rows=packed.out_features
    )


def _huge_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` on huge pages (see :func:`hugepages.weight_arena`)."""
    out = hugepages.empty(tuple(t.shape), t.dtype)
    return out.copy_(t)


def _panels(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``[out, in]`` as ``[panels, rows, in]``, zero rows added to fill the last panel."""
    out_features, in_features = weight.shape
    panels = -(-out_features // rows)
    padded = F.pad(weight, (0, 0, 0, panels * rows - out_features))
    return padded.view(panels, rows, in_features)


def packed_silu_and_mul(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """``silu(x @ Wg.T) * (x @ Wu.T)`` in one pass, for a weight from :func:`pack_gated_weight`."""
    if not packed.gated:
        raise ValueError("packed_silu_and_mul takes a weight packed by pack_gated_weight")
    return _leaflm_gemm(x, packed, None)


def packed_linear(
    x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + b`` for a weight packed by :func:`pack_weight`; ``x`` is ``[..., in]``."""
    if not packed.panel_width:
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(rows, packed.data, bias, "none", [], "")
        return out.view(*x.shape[:-1], out.shape[-1])
    if packed.gated:
        raise ValueError("a gated weight goes through packed_silu_and_mul")
    return _leaflm_gemm(x, packed, bias)


def _leaflm_gemm(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """Run leaflm's GEMM (the gated one for a gated weight, which takes no bias) over ``x``."""
    rows = _float32_rows(x, packed)
    n = packed.out_features
    out = torch.empty((rows.shape[0], n), dtype=torch.float32)
    m, k, threads = rows.shape[0], packed.in_features, torch.get_num_threads()
    if m and packed.gated:
        _silu_mul()(
            rows.data_ptr(), rows.stride(0), packed.data.data_ptr(), out.data_ptr(), n,
            m, n, k, threads,
        )  # fmt: skip
    elif m:
        b = None if bias is None else bias.contiguous()
        _gemm()(
            rows.data_ptr(), rows.stride(0), packed.data.data_ptr(),
            None if b is None else b.data_ptr(), out.data_ptr(), n, m, n, k, threads,
        )  # fmt: skip
    return out.view(*x.shape[:-1], n)


def _float32_rows(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """``x`` as ``[rows, in]`` with unit column stride, or a ValueError naming what is wrong."""
    if x.dtype != torch.float32 or x.shape[-1] != packed.in_features:
        raise ValueError(
            f"packed linear takes float32 [..., {packed.in_features}] inputs, "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


@functools.cache
def _gemm():
    return build.require_library().leaflm_gemm


@functools.cache
def _silu_mul():
    return build.require_library().leaflm_gemm_silu_mul
