"""Triton fused sampler: temperature, top-k, top-p, min-p and seeded sampling, no vocab sort.

One program per row, streaming the row's logits in tiles (the row stays in L2 across passes):

1. max, argmax (lowest index) and total mass in one online pass; greedy rows stop here;
2. top-k / top-p thresholds by a k-ary search over the float bit patterns of the unnormalised
   probabilities ``p = exp((l - max) / T)`` (non-negative floats order like their bit
   patterns): each pass counts tokens and sums mass at ``NUM_PIVOTS`` candidate thresholds at
   once; once the bracket holds <= BLOCK tokens they are compacted to a scratch row and the
   search ends in registers at the exact threshold of :mod:`leaflm.kernels.reference.sampling`
   (threshold semantics, ties kept), typically after 3-4 passes over the vocabulary;
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
def _pick(ok, piv, cnt, mass, lo, hi, cnt_lo, cnt_hi, mass_hi):
    """Shrink the bracket to the largest passing / smallest failing pivot (counts and masses
    fall as pivots rise)."""
    new_lo = tl.max(tl.where(ok, piv, lo), axis=0)
    cnt_lo = tl.min(tl.where(ok, cnt, cnt_lo), axis=0)
    hi = tl.min(tl.where(ok, hi, piv), axis=0)
    cnt_hi = tl.max(tl.where(ok, cnt_hi, cnt), axis=0)
    mass_hi = tl.max(tl.where(ok, mass_hi, mass), axis=0)
    return new_lo, hi, cnt_lo, cnt_hi, mass_hi


@triton.jit
def _search(row_ptr, scratch_ptr, V, inv_t, mx, lo, hi, cnt_lo, cnt_hi, k, target,
            BY_MASS: tl.constexpr, NUM_PIVOTS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """Largest float-bit pattern ``t`` in ``[lo, hi)`` with ``count(p >= t) >= k`` (or
    ``mass(p >= t) >= target`` when ``BY_MASS``); ``lo`` satisfies it, ``hi`` does not.

    ``cnt_lo``/``cnt_hi`` count tokens ``>= lo`` / ``>= hi`` (``cnt_lo`` may overestimate).
    Full passes over the row run only until the bracket holds <= BLOCK tokens; those are then
    compacted into ``scratch_ptr`` and the search finishes in registers.
    """
    j = tl.arange(0, NUM_PIVOTS)
    mass_hi = tl.zeros([], tl.float32) + 0.0 * target  # tokens >= hi = above_one: none
    while (hi - lo > 1) & (cnt_lo - cnt_hi > BLOCK):
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
        ok = mass >= target if BY_MASS else cnt >= k
        lo, hi, cnt_lo, cnt_hi, mass_hi = _pick(ok, piv, cnt, mass, lo, hi, cnt_lo, cnt_hi, mass_hi)

    if (hi - lo > 1) & (cnt_lo - cnt_hi > 1):
        lo_f = lo.to(tl.float32, bitcast=True)
        hi_f = hi.to(tl.float32, bitcast=True)
        n = 0
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            p = _probs(row_ptr, offs, V, inv_t, mx)
            inb = (p >= lo_f) & (p < hi_f) & (offs < V)
            pos = n + tl.cumsum(inb.to(tl.int32), axis=0) - 1
            tl.store(scratch_ptr + pos, p, mask=inb)
            n += tl.sum(inb.to(tl.int32), axis=0)
        tl.debug_barrier()  # the compacted values were stored by other threads
        c = tl.load(scratch_ptr + tl.arange(0, BLOCK), mask=tl.arange(0, BLOCK) < n, other=-1.0)
        cnt_base = cnt_hi  # tokens >= the hi of compaction time; c holds those below it
        mass_base = mass_hi
        while (hi - lo > 1) & (cnt_lo - cnt_hi > 1):
            step = tl.maximum((hi - lo) // (NUM_PIVOTS + 1), 1)
            piv = tl.minimum(lo + step * (j + 1), hi - 1)
            ge = c[None, :] >= piv.to(tl.float32, bitcast=True)[:, None]
            cnt = cnt_base + tl.sum(ge.to(tl.int32), axis=1)
            mass = mass_base + tl.sum(tl.where(ge, c[None, :], 0.0), axis=1)
            ok = mass >= target if BY_MASS else cnt >= k
            lo, hi, cnt_lo, cnt_hi, mass_hi = _pick(
                ok, piv, cnt, mass, lo, hi, cnt_lo, cnt_hi, mass_hi
            )
    return lo


@triton.jit
def _sample_kernel(
    logits_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seed_ptr, offset_ptr, out_ptr, scratch_ptr,
    V, stride_row, greedy_eps,
    BLOCK: tl.constexpr, NUM_PIVOTS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    scratch_ptr += row * BLOCK
    temp = tl.load(temp_ptr + row).to(tl.float32)
    greedy = temp < greedy_eps
    inv_t = tl.where(greedy, 1.0, 1.0 / tl.where(greedy, 1.0, temp))

    # pass 1: online max / first argmax / total mass sum(exp(x - max))
    mx = float("-inf")
    arg = 0
    total_all = 0.0
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_t
        tmax = tl.max(x, axis=0)
        targ = tl.min(tl.where(x == tmax, offs, V), axis=0)
        arg = tl.where(tmax > mx, targ, arg)
        new_mx = tl.maximum(mx, tmax)
        m_safe = tl.where(new_mx == float("-inf"), 0.0, new_mx)
        total_all = total_all * tl.exp(mx - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
        mx = new_mx

    if greedy:
        tl.store(out_ptr + row, tl.cast(arg, tl.int64))  # `arg` is a tensor by now
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
            thr = _search(row_ptr, scratch_ptr, V, inv_t, mx, zero, above_one, n_all, zero, k,
                          0.0 * top_p, False, NUM_PIVOTS, BLOCK)  # fmt: skip
        if top_p < 1.0:
            kept = total_all
            n_kept = n_all
            if thr != 0:  # top-k was applied: mass and count of its set
                thr_f = thr.to(tl.float32, bitcast=True)
                kept = 0.0
                n_kept = zero
                for start in range(0, V, BLOCK):
                    p = _probs(row_ptr, start + tl.arange(0, BLOCK), V, inv_t, mx)
                    kept += tl.sum(tl.where(p >= thr_f, p, 0.0), axis=0)
                    n_kept += tl.sum((p >= thr_f).to(tl.int32), axis=0)
            thr = _search(row_ptr, scratch_ptr, V, inv_t, mx, thr, above_one, n_kept, zero, k, top_p * kept,
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
    scratch = torch.empty(num_rows, block, dtype=torch.float32, device=logits.device)
    _sample_kernel[(num_rows,)](
        logits, temperature, top_k, top_p, min_p, seeds, offsets, out, scratch,
        vocab, logits.stride(0), GREEDY_EPS,
        BLOCK=block, NUM_PIVOTS=8, num_warps=8,
    )  # fmt: skip
    return out
