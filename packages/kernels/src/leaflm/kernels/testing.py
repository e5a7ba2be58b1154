"""Test helpers shared by the kernel tests, the benchmarks and downstream packages' tests.

``make_paged_case`` builds a random paged KV cache with shuffled, non-contiguous blocks plus the
dense per-sequence keys/values it holds; ``dense_attention_f64`` is the obviously-correct float64
attention the references are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedCase:
    """A random paged KV cache and the dense K/V (float64) of each sequence it holds."""

    key_cache: torch.Tensor
    value_cache: torch.Tensor
    block_tables: torch.Tensor  # [S, max_blocks] int32
    seq_lens: torch.Tensor  # [S] int32
    keys: list[torch.Tensor]  # per sequence [len, H_kv, D] float64
    values: list[torch.Tensor]


def make_paged_case(
    seq_lens: list[int],
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    extra_blocks: int = 3,
    dense: bool = True,
) -> PagedCase:
    """Random caches where each sequence owns shuffled blocks; unused slots hold garbage.

    ``dense=False`` skips the float64 copies (benchmarks at full size).
    """
    need = [max(1, -(-n // block_size)) for n in seq_lens]
    total = sum(need) + extra_blocks
    shape = (total, block_size, num_kv_heads, head_dim)
    kc = torch.randn(shape, generator=generator).to(dtype)
    vc = torch.randn(shape, generator=generator).to(dtype)
    perm = torch.randperm(total, generator=generator)
    max_blocks = max(need) + 1
    tables = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32)
    keys, values, pos = [], [], 0
    for i, (n, nb) in enumerate(zip(seq_lens, need, strict=True)):
        blocks = perm[pos : pos + nb]
        pos += nb
        tables[i, :nb] = blocks.int()
        tables[i, nb:] = int(perm[-1])  # junk-but-valid entries past the end
        if dense:
            keys.append(kc[blocks].reshape(-1, num_kv_heads, head_dim)[:n].double())
            values.append(vc[blocks].reshape(-1, num_kv_heads, head_dim)[:n].double())
    return PagedCase(
        kc.to(device),
        vc.to(device),
        tables.to(device),
        torch.tensor(seq_lens, dtype=torch.int32, device=device),
        keys,
        values,
    )


def dense_attention_f64(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    *,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention of the last ``Q`` positions of one sequence: q ``[Q, H, D]``, k/v ``[L, H_kv, D]``."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    n_q, n_heads, _ = q.shape
    length, n_kv, _ = k.shape
    out = torch.zeros(n_q, n_heads, v.shape[-1], dtype=torch.float64)
    for h in range(n_heads):
        kh = h // (n_heads // n_kv)
        for i in range(n_q):
            p = length - n_q + i
            s = (k[: p + 1, kh] @ q[i, h]) * scale
            if softcap:
                s = softcap * torch.tanh(s / softcap)
            if alibi_slopes is not None:
                s = s + float(alibi_slopes[h]) * (torch.arange(p + 1) - p)
            if sliding_window:
                s[: max(0, p + 1 - sliding_window)] = float("-inf")
            out[i, h] = torch.softmax(s, 0) @ v[: p + 1, kh]
    return out


def filtered_probs(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float
) -> torch.Tensor:
    """The distribution ``sample`` must draw from, built by sorting (float64, one row)."""
    x = logits.double() / temperature
    p = torch.softmax(x, 0)
    order = torch.argsort(p, descending=True, stable=True)
    sp = p[order]
    keep = torch.ones_like(sp, dtype=torch.bool)
    if 0 < top_k < len(sp):
        keep &= sp >= sp[top_k - 1]
    if top_p < 1.0:
        kept = torch.where(keep, sp, 0.0)
        c = kept.cumsum(0)
        m = int(torch.searchsorted(c, top_p * c[-1]))
        keep &= sp >= sp[min(m, len(sp) - 1)]
    if min_p > 0:
        keep &= sp >= min_p * sp[0]
    out = torch.zeros_like(p)
    out[order] = torch.where(keep, sp, 0.0)
    return out / out.sum()
