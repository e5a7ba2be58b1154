"""Paged attention on float32 CPU queries through the C kernel (see ``paged_attention.c``).

The cache may be float32 or float16 (half the bytes a decode step streams); queries, keys and
values written into it and the output stay float32.

Signatures and semantics are those of :mod:`leaflm.kernels.reference.attention`.
"""

from __future__ import annotations

import ctypes

import torch

from leaflm.kernels import reference as ref
from leaflm.kernels.cpu.build import require_library
from leaflm.kernels.dispatch import CPU_CACHE_DTYPES


def _half(key_cache: torch.Tensor, value_cache: torch.Tensor) -> int:
    """1 for a float16 cache, 0 for float32 (the kernel's two element kinds)."""
    if key_cache.dtype != value_cache.dtype or key_cache.dtype not in CPU_CACHE_DTYPES:
        raise TypeError(f"the C kernel reads float32 or float16 caches, not {key_cache.dtype}")
    return int(key_cache.dtype == torch.float16)


def _attend(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    row_table: torch.Tensor | None,
    row_ctx: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    sliding_window: int | None,
    softcap: float | None,
    out: torch.Tensor | None,
) -> torch.Tensor:
    lib = require_library()
    rows, num_heads, head_dim = query.shape
    _, block_size, num_kv, _ = key_cache.shape
    if out is None:
        out = torch.empty_like(query)
    if rows == 0:
        return out
    # Rows may be strided (a view of a fused QKV projection); heads within a row may not.
    q = query if query[0].is_contiguous() else query.contiguous()
    tables = block_tables.to(torch.int32).contiguous()
    table_rows = None if row_table is None else row_table.to(torch.int32).contiguous()
    row_ctx = row_ctx.to(torch.int32).contiguous()
    alibi = None if alibi_slopes is None else alibi_slopes.float().contiguous()
    target = out if out.is_contiguous() else torch.empty(query.shape, dtype=query.dtype)
    lib.leaflm_paged_attention(
        q.data_ptr(), q.stride(0), key_cache.contiguous().data_ptr(),
        value_cache.contiguous().data_ptr(), _half(key_cache, value_cache),
        tables.data_ptr(), tables.shape[1],
        None if table_rows is None else table_rows.data_ptr(), row_ctx.data_ptr(),
        target.data_ptr(), rows, num_heads, num_kv, head_dim, block_size, ctypes.c_float(scale),
        None if alibi is None else alibi.data_ptr(), sliding_window or 0,
        ctypes.c_float(softcap or 0.0), torch.get_num_threads(),
    )  # fmt: skip
    if target is not out:
        out.copy_(target)
    return out


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        ref.write_kv_cache(key, value, key_cache, value_cache, slot_mapping)  # must be in place
        return
    tokens = key.shape[0]
    k = key.reshape(tokens, -1)
    v = value.reshape(tokens, -1)
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    slots = slot_mapping.to(torch.int64).contiguous()
    require_library().leaflm_write_kv(
        k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), key_cache.data_ptr(),
        value_cache.data_ptr(), _half(key_cache, value_cache), slots.data_ptr(), tokens,
        k.shape[1],
    )  # fmt: skip


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
) -> torch.Tensor:
    return _attend(
        query, key_cache, value_cache, block_tables, None, seq_lens, scale,
        alibi_slopes, sliding_window, softcap, out,
    )  # fmt: skip


def paged_attention_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    out: torch.Tensor | None = None,
    max_query_len: int | None = None,
) -> torch.Tensor:
    """Each new token is a query row whose context ends at its own position (causal)."""
    qsl = query_start_loc.long()
    qlens = qsl[1:] - qsl[:-1]
    seq_of_row = torch.repeat_interleave(torch.arange(qlens.numel()), qlens)
    # Row i of sequence s sits at position seq_len - qlen + i, so it sees that many keys + 1.
    index_in_seq = torch.arange(query.shape[0]) - qsl[:-1][seq_of_row]
    row_ctx = seq_lens.long()[seq_of_row] - qlens[seq_of_row] + index_in_seq + 1
    return _attend(
        query, key_cache, value_cache, block_tables, seq_of_row, row_ctx, scale,
        alibi_slopes, sliding_window, softcap, out,
    )  # fmt: skip
