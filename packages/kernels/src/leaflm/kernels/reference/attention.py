"""Reference paged-attention ops: the specification of the Triton kernels and the CPU path.

KV cache layout (keys and values alike): ``[num_blocks, block_size, num_kv_heads, head_dim]``.
A token's slot is ``block * block_size + offset``; a sequence's keys live in the blocks its
row of ``block_tables`` names, in order.

Score of query position ``p`` against key position ``j`` (computed in float32)::

    s = (q . k_j) * scale
    s = softcap * tanh(s / softcap)            # if softcap (Gemma 2), after scaling
    s = s + slope[h] * (j - p)                 # if alibi_slopes (BLOOM; <= 0, so no overflow)
    masked unless j <= p and j > p - sliding_window

``slope * (j - p)`` and BLOOM's ``slope * j`` differ by a per-row constant, which softmax
cancels; the relative form keeps magnitudes small.
"""

from __future__ import annotations

import itertools

import torch


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter ``key``/``value`` ``[T, H_kv, D]`` into the caches at ``slot_mapping`` (−1 = skip)."""
    keep = slot_mapping >= 0
    slots = slot_mapping.long()
    if not bool(keep.all()):
        slots, key, value = slots[keep], key[keep], value[keep]
    nb, bs = key_cache.shape[:2]
    key_cache.view(nb * bs, *key_cache.shape[2:])[slots] = key.to(key_cache.dtype)
    value_cache.view(nb * bs, *value_cache.shape[2:])[slots] = value.to(value_cache.dtype)


def _gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """``[S, H_kv, num_blocks * block_size, D]`` float32 copy of each sequence's first blocks.

    One ``index_select`` over whole blocks, then heads to the front so each (sequence, KV head)
    is one contiguous ``[K, D]`` matrix: the score and value products become plain batched
    GEMMs instead of strided ones (several times faster on CPU).
    """
    tables = block_tables[:, :num_blocks].reshape(-1).long()
    g = cache.index_select(0, tables)  # [S * nb, bs, H, D]
    s = block_tables.shape[0]
    g = g.view(s, num_blocks * cache.shape[1], *cache.shape[2:])
    return g.transpose(1, 2).contiguous().float()


def _scores(
    q: torch.Tensor,
    k: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    sliding_window: int | None,
    softcap: float | None,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Masked scores ``[B, H_kv, G, Q, K]`` for q ``[B, Q, H, D]`` and k ``[B, H_kv, K, D]``.

    Query head ``h`` reads KV head ``h // G`` (``G = H / H_kv``): viewing the queries grouped
    by KV head lets one KV head serve its whole group without repeating keys. ``q_pos``
    ``[B, Q]`` and ``k_pos`` ``[K]`` are absolute positions; ``valid`` ``[B, K]`` masks keys
    beyond each sequence's length.
    """
    b, nq, num_heads, d = q.shape
    num_kv = k.shape[1]
    group = num_heads // num_kv
    qg = q.view(b, nq, num_kv, group, d).permute(0, 2, 3, 1, 4).reshape(b, num_kv, group * nq, d)
    s = torch.matmul(qg, k.transpose(-1, -2)).view(b, num_kv, group, nq, -1) * scale
    if softcap is not None and softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    rel = (k_pos - q_pos.unsqueeze(-1)).view(b, 1, 1, nq, -1)  # [B, 1, 1, Q, K]
    if alibi_slopes is not None:
        s = s + alibi_slopes.float().view(num_kv, group, 1, 1) * rel.float()
    mask = (rel <= 0) & valid.view(b, 1, 1, 1, -1)
    if sliding_window is not None and sliding_window > 0:
        mask = mask & (rel > -sliding_window)
    return s.masked_fill(~mask, float("-inf"))


def _softmax_v(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(s) @ v`` for s ``[B, H_kv, G, Q, K]``, v ``[B, H_kv, K, D]`` -> ``[B, Q, H, D]``.

    Rows with no visible key give zeros.
    """
    b, num_kv, group, nq, _ = s.shape
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    o = torch.matmul(p.view(b, num_kv, group * nq, -1), v)  # [B, H_kv, G * Q, D]
    return (
        o.view(b, num_kv, group, nq, -1).permute(0, 3, 1, 2, 4).reshape(b, nq, num_kv * group, -1)
    )


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
    """One query token per sequence (its KV already written) against its whole context.

    Args:
        query: ``[S, H, D]``. block_tables: ``[S, max_blocks]`` int32. seq_lens: ``[S]`` int32,
            context length including the current token (at position ``seq_len - 1``).
    Returns:
        ``[S, H, D]`` in ``query.dtype`` (written into ``out`` when given).
    """
    if out is None:
        out = torch.empty_like(query)
    num_seqs = query.shape[0]
    if num_seqs == 0:
        return out
    bs = key_cache.shape[1]
    max_len = int(seq_lens.max())
    nb = max(1, -(-max_len // bs))
    k = _gather_kv(key_cache, block_tables, nb)
    v = _gather_kv(value_cache, block_tables, nb)
    k_pos = torch.arange(nb * bs, device=query.device)
    lens = seq_lens.long()
    valid = k_pos.unsqueeze(0) < lens.unsqueeze(1)  # [S, K]
    q = query.float().unsqueeze(1)  # [S, 1, H, D]
    s = _scores(
        q, k, (lens - 1).unsqueeze(1), k_pos, scale, alibi_slopes, sliding_window, softcap, valid
    )
    out.copy_(_softmax_v(s, v).squeeze(1))
    return out


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
    """Causal attention of each sequence's new tokens over its cached prefix and themselves.

    Args:
        query: ``[T, H, D]``, all sequences' new tokens concatenated.
        query_start_loc: ``[S + 1]`` int32 cumulative offsets into ``query``.
        seq_lens: ``[S]`` int32 total context (cached prefix + new tokens); sequence ``i``'s
            new tokens are its last ``query_start_loc[i+1] - query_start_loc[i]`` positions.
        max_query_len: unused here (the Triton path uses it to size its grid without a sync).
    Returns:
        ``[T, H, D]`` in ``query.dtype``.
    """
    if out is None:
        out = torch.empty_like(query)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    qlens = [b - a for a, b in itertools.pairwise(starts)]
    # Sequences with one new token (decode rows of a mixed batch) go through the batched path.
    single = [i for i, n in enumerate(qlens) if n == 1]
    if single:
        idx = torch.tensor(single, device=query.device)
        rows = query_start_loc.long()[idx]
        out[rows] = paged_attention_decode(
            query[rows], key_cache, value_cache, block_tables[idx], seq_lens[idx], scale,
            alibi_slopes=alibi_slopes, sliding_window=sliding_window, softcap=softcap,
        )  # fmt: skip
    bs = key_cache.shape[1]
    for i, n in enumerate(qlens):
        if n <= 1:
            continue
        length = lens[i]
        nb = -(-length // bs)
        k = _gather_kv(key_cache, block_tables[i : i + 1], nb)[:, :, :length]
        v = _gather_kv(value_cache, block_tables[i : i + 1], nb)[:, :, :length]
        q = query[starts[i] : starts[i + 1]].float().unsqueeze(0)  # [1, n, H, D]
        q_pos = torch.arange(length - n, length, device=query.device).unsqueeze(0)
        k_pos = torch.arange(length, device=query.device)
        valid = torch.ones(1, length, dtype=torch.bool, device=query.device)
        s = _scores(q, k, q_pos, k_pos, scale, alibi_slopes, sliding_window, softcap, valid)
        out[starts[i] : starts[i + 1]] = _softmax_v(s, v)[0].to(out.dtype)
    return out
