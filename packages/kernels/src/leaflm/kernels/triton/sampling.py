"""Triton fused sampler: temperature, top-k, top-p, min-p and seeded sampling, no vocab sort.

One program per row, streaming the row's logits in tiles (the row stays in L2 across passes):

1. max and argmax (lowest index) in one pass; greedy rows stop here;
2. top-k / top-p thresholds by a k-ary search over the float bit patterns of the unnormalised
   probabilities ``p = exp((l - max) / T)`` (non-negative floats order like their bit
   patterns): each pass counts tokens and sums mass at ``NUM_PIVOTS`` candidate thresholds at
   once, and the search stops when the bracket holds one token, so ~6-11 passes reach the exact
   threshold of :mod:`leaflm.kernels.reference.sampling` (threshold semantics, ties kept);
3. kept mass, then inverse-CDF sampling in vocabulary order with the same counter-based uniform
   ``u = H(seed, offset)`` as the reference, so both paths agree token for token up to float
   rounding at CDF boundaries.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from leaflm.kernels.reference.sampling import GREEDY_EPS


@triton.jit
def _fmix32(h):
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@triton.jit
def _uniform(seed, offset):
    """Same hash as ``reference.sampling.uniform_from_seed`` (uint32 arithmetic wraps)."""
    h = _fmix32((seed & 0xFFFFFFFF).to(tl.uint32) ^ 0x9E3779B9)
    h = _fmix32(h ^ ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32))
    h = _fmix32(h ^ (offset & 0xFFFFFFFF).to(tl.uint32))
    h = _fmix32(h ^ ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32))
    return (h >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _probs(row_ptr, offs, V, inv_t, mx):
    x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
    return tl.exp(x * inv_t - mx)


@triton.jit
def _search(row_ptr, V, inv_t, mx, lo, hi, cnt_lo, cnt_hi, k, target,
            BY_MASS: tl.constexpr, NUM_PIVOTS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """Largest float-bit pattern ``t`` in ``[lo, hi)`` with ``count(p >= t) >= k`` (or
    ``mass(p >= t) >= target`` when ``BY_MASS``); ``lo`` satisfies it, ``hi`` does not."""
    j = tl.arange(0, NUM_PIVOTS)
    while (hi - lo > 1) & (cnt_lo - cnt_hi > 1):
        step = tl.maximum((hi - lo) // (NUM_PIVOTS + 1), 1)
        piv = tl.minimum(lo + step * (j + 1), hi - 1)
        piv_f = piv.to(tl.float32, bitcast=True)
        cnt = tl.zeros([NUM_PIVOTS], dtype=tl.int32)
        mass = tl.zeros([NUM_PIVOTS], dtype=tl.float32)
        for start in range(0, V, BLOCK):
            p = _probs(row_ptr, start + tl.arange(0, BLOCK), V, inv_t, mx)
            ge = p[None, :] >= piv_f[:, None]
            cnt += tl.sum(ge.to(tl.int32), axis=1)
            mass += tl.sum(tl.where(ge, p[None, :], 0.0), axis=1)
        if BY_MASS:
            ok = mass >= target
        else:
            ok = cnt >= k
        new_lo = tl.max(tl.where(ok, piv, lo), axis=0)
        cnt_lo = tl.min(tl.where(ok, cnt, cnt_lo), axis=0)
        hi = tl.min(tl.where(ok, hi, piv), axis=0)
        cnt_hi = tl.max(tl.where(ok, cnt_hi, cnt), axis=0)
        lo = new_lo
    return lo


@triton.jit
def _sample_kernel(
    logits_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seed_ptr, offset_ptr, out_ptr,
    V, stride_row, greedy_eps,
    BLOCK: tl.constexpr, NUM_PIVOTS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    temp = tl.load(temp_ptr + row).to(tl.float32)
    greedy = temp < greedy_eps
    inv_t = tl.where(greedy, 1.0, 1.0 / tl.where(greedy, 1.0, temp))

    # pass 1: online max / first argmax / normaliser
    mx = float("-inf")
    arg = 0
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_t
        tmax = tl.max(x, axis=0)
        targ = tl.min(tl.where(x == tmax, offs, V), axis=0)
        arg = tl.where(tmax > mx, targ, arg)
        mx = tl.maximum(mx, tmax)

    if greedy:
        tl.store(out_ptr + row, arg.to(tl.int64))
    else:
        k = tl.load(topk_ptr + row).to(tl.int32)
        top_p = tl.load(topp_ptr + row).to(tl.float32)
        min_p = tl.load(minp_ptr + row).to(tl.float32)
        # float bits: 1.0 is p_max, so nothing is >= the next float up
        above_one = tl.full([], 0x3F800001, tl.int32)
        zero = tl.zeros([], tl.int32)
        n_all = zero + V
        thr = zero  # float bits of the keep threshold (0.0: keep all)
        if (k > 0) & (k < V):
            thr = _search(row_ptr, V, inv_t, mx, zero, above_one, n_all, zero, k, 0.0 * top_p,
                          False, NUM_PIVOTS, BLOCK)  # fmt: skip
        if top_p < 1.0:
            thr_f = thr.to(tl.float32, bitcast=True)
            kept = 0.0
            for start in range(0, V, BLOCK):
                p = _probs(row_ptr, start + tl.arange(0, BLOCK), V, inv_t, mx)
                kept += tl.sum(tl.where(p >= thr_f, p, 0.0), axis=0)
            # count(p >= thr) is not tracked: V only weakens the early stop
            thr = _search(row_ptr, V, inv_t, mx, thr, above_one, n_all, zero, k, top_p * kept,
                          True, NUM_PIVOTS, BLOCK)  # fmt: skip
        thr_f = tl.maximum(thr.to(tl.float32, bitcast=True), min_p)

        total = 0.0
        for start in range(0, V, BLOCK):
            p = _probs(row_ptr, start + tl.arange(0, BLOCK), V, inv_t, mx)
            total += tl.sum(tl.where(p >= thr_f, p, 0.0), axis=0)
        u = _uniform(tl.load(seed_ptr + row).to(tl.int64), tl.load(offset_ptr + row).to(tl.int64))
        target = u * total
        running = 0.0
        found = V
        last = 0
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            p = _probs(row_ptr, offs, V, inv_t, mx)
            p = tl.where(p >= thr_f, p, 0.0)
            c = running + tl.cumsum(p, axis=0)
            hit = (c > target) & (p > 0.0)
            found = tl.minimum(found, tl.min(tl.where(hit, offs, V), axis=0))
            last = tl.maximum(last, tl.max(tl.where(p > 0.0, offs, 0), axis=0))
            running += tl.sum(p, axis=0)
        tok = tl.where(found < V, found, last)  # rounding put target past the end
        tl.store(out_ptr + row, tok.to(tl.int64))


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
) -> torch.Tensor:
    """See :func:`leaflm.kernels.reference.sample`; one program per row, no host sync."""
    num_rows, vocab = logits.shape
    out = torch.empty(num_rows, dtype=torch.long, device=logits.device)
    if num_rows == 0:
        return out
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    block = min(2048, triton.next_power_of_2(vocab))
    _sample_kernel[(num_rows,)](
        logits, temperature, top_k, top_p, min_p, seeds, offsets, out,
        vocab, logits.stride(0), GREEDY_EPS,
        BLOCK=block, NUM_PIVOTS=8, num_warps=8,
    )  # fmt: skip
    return out
