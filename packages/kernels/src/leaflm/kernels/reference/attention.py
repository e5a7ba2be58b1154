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
    """``[S, num_blocks * block_size, H_kv, D]`` float32 view of each sequence's first blocks."""
    tables = block_tables[:, :num_blocks].long()
    g = cache[tables]  # [S, nb, bs, H, D]
    s, nb, bs = g.shape[:3]
    return g.reshape(s, nb * bs, *cache.shape[2:]).float()


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
    """Masked scores ``[..., H, Q, K]`` for q ``[..., Q, H, D]`` and k ``[..., K, H_kv, D]``.

    ``q_pos`` ``[..., Q]`` and ``k_pos`` ``[K]`` are absolute positions; ``valid`` ``[..., 1, 1, K]``
    masks keys beyond each sequence's length.
    """
    num_heads, num_kv = q.shape[-2], k.shape[-2]
    group = num_heads // num_kv
    if group > 1:
        k = k.repeat_interleave(group, dim=-2)
    s = torch.einsum("...qhd,...khd->...hqk", q, k) * scale
    if softcap is not None and softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    rel = (k_pos - q_pos.unsqueeze(-1)).unsqueeze(-3).float()  # [..., 1, Q, K]
    if alibi_slopes is not None:
        s = s + alibi_slopes.float().view(-1, 1, 1) * rel
    mask = (rel <= 0) & valid
    if sliding_window is not None and sliding_window > 0:
        mask = mask & (rel > -sliding_window)
    return s.masked_fill(~mask, float("-inf"))


def _softmax_v(s: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``softmax(s) @ v`` -> ``[..., Q, H, D]``; rows with no visible key give zeros."""
    group = num_heads // v.shape[-2]
    if group > 1:
        v = v.repeat_interleave(group, dim=-2)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("...hqk,...khd->...qhd", p, v)


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
    num_seqs, num_heads, _ = query.shape
    if num_seqs == 0:
        return out
    bs = key_cache.shape[1]
    max_len = int(seq_lens.max())
    nb = max(1, -(-max_len // bs))
    k = _gather_kv(key_cache, block_tables, nb)
    v = _gather_kv(value_cache, block_tables, nb)
    k_pos = torch.arange(nb * bs, device=query.device)
    lens = seq_lens.long()
    valid = (k_pos.unsqueeze(0) < lens.unsqueeze(1)).view(num_seqs, 1, 1, -1)
    q = query.float().unsqueeze(1)  # [S, 1, H, D]
    s = _scores(
        q, k, (lens - 1).unsqueeze(1), k_pos, scale, alibi_slopes, sliding_window, softcap, valid
    )
    out.copy_(_softmax_v(s, v, num_heads).squeeze(1))
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
        k = _gather_kv(key_cache, block_tables[i : i + 1], nb)[0, :length]
        v = _gather_kv(value_cache, block_tables[i : i + 1], nb)[0, :length]
        q = query[starts[i] : starts[i + 1]].float()
        q_pos = torch.arange(length - n, length, device=query.device)
        k_pos = torch.arange(length, device=query.device)
        valid = torch.ones(1, 1, length, dtype=torch.bool, device=query.device)
        s = _scores(q, k, q_pos, k_pos, scale, alibi_slopes, sliding_window, softcap, valid)
        out[starts[i] : starts[i + 1]] = _softmax_v(s, v, query.shape[1]).to(out.dtype)
    return out
