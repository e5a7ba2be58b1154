"""Fused layer ops on float32 CPU tensors through the C kernels (see ``layers.c``).

Signatures and semantics are those of :mod:`leaflm.kernels.reference.layers`.
"""

from __future__ import annotations

import ctypes

import torch

from leaflm.kernels import reference as ref
from leaflm.kernels.cpu.build import require_library


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[rows, last]`` with unit stride along the last dim (a copy only if needed)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    cols = x.shape[-1]
    x2 = _rows(x)
    out = torch.empty(x2.shape, dtype=x.dtype)
    res2 = None if residual is None else _rows(residual)
    new_res = None if residual is None else torch.empty(x2.shape, dtype=x.dtype)
    require_library().leaflm_rms_norm(
        x2.data_ptr(), x2.stride(0),
        None if res2 is None else res2.data_ptr(), 0 if res2 is None else res2.stride(0),
        None if new_res is None else new_res.data_ptr(), weight.contiguous().data_ptr(),
        out.data_ptr(), x2.shape[0], cols, ctypes.c_float(eps), torch.get_num_threads(),
    )  # fmt: skip
    if new_res is None:
        return out.view(x.shape)
    return out.view(x.shape), new_res.view(x.shape)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    *,
    head_dim: int | None = None,
) -> None:
    lib = require_library()
    rot_dim = cos_sin_cache.shape[-1]
    cache = cos_sin_cache.contiguous()
    pos = positions.to(torch.int64).contiguous()
    for t in (query, key):
        if t is None or t.shape[0] == 0:
            continue
        d = t.shape[-1] if t.dim() == 3 else (head_dim or rot_dim)
        rows = t.view(t.shape[0], -1)  # a view: the rotation is in place
        if rows.stride(-1) != 1:  # not a layout the kernel walks: the reference handles it
            ref.rotary_embedding(positions, t, None, cos_sin_cache, is_neox, head_dim=head_dim)
            continue
        lib.leaflm_rotary(
            pos.data_ptr(), rows.data_ptr(), rows.stride(0), t.shape[0], rows.shape[1] // d, d,
            cache.data_ptr(), rot_dim, int(is_neox), torch.get_num_threads(),
        )  # fmt: skip


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    x2 = _rows(x)
    out = torch.empty((x2.shape[0], d), dtype=x.dtype)
    require_library().leaflm_silu_and_mul(
        x2.data_ptr(), x2.stride(0), out.data_ptr(), x2.shape[0], d, torch.get_num_threads()
    )
    return out.view(*x.shape[:-1], d)


def embedding(
    ids: torch.Tensor, table: torch.Tensor, *, panel_width: int = 0, num_rows: int | None = None
) -> torch.Tensor:
    """Rows ``ids`` of a float32 ``[rows, dim]`` table, or of the first ``num_rows`` rows held
    in leaflm's packed GEMM panels (``[panels, dim, width]``, ``panel_width`` > 0); an id out
    of range is an IndexError, as in ``F.embedding``."""
    if panel_width:
        rows, dim = num_rows or table.shape[0] * panel_width, table.shape[1]
    else:
        rows, dim = table.shape
    if table.stride(-1) != 1 or (panel_width and not table.is_contiguous()):
        raise ValueError("embedding takes a table with unit stride along its rows")
    flat = ids.reshape(-1)
    idx = flat if flat.dtype == torch.int64 and flat.is_contiguous() else flat.long().contiguous()
    out = torch.empty((idx.shape[0], dim), dtype=table.dtype)
    bad = require_library().leaflm_gather_rows(
        table.data_ptr(), 0 if panel_width else table.stride(0), panel_width, rows,
        idx.data_ptr(), idx.shape[0], dim, out.data_ptr(),
    )  # fmt: skip
    if bad:
        raise IndexError(f"{bad} token id(s) outside the embedding's {rows} rows")
    return out.view(*ids.shape, dim)
