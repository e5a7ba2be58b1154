"""Reference sampling ops: penalties, filtered seeded sampling, logprobs.

Filtering uses *threshold* semantics so that a one-pass kernel (no sort) can reproduce it
exactly. With ``p_i = exp((l_i - max l) / T)`` (unnormalised; ``p_max = 1``):

* top-k keeps ``p >= t_k``, ``t_k`` the k-th largest ``p`` (ties at the boundary kept, as vLLM);
* top-p keeps ``p >= t_p``, ``t_p`` the largest ``t`` with ``mass(p >= t) >= top_p * mass(top-k set)``:
  the smallest prefix of the sorted distribution reaching ``top_p`` (always >= 1 token);
* min-p keeps ``p >= min_p * p_max`` (scale-free, so renormalising first changes nothing).

The kept set is ``p >= max(t_k, t_p, t_min)``. A row then draws one uniform ``u`` that is a pure
function of ``(seed, offset)`` (see :func:`uniform_from_seed`) and takes the first token, in
vocabulary order, whose running kept mass exceeds ``u * kept_mass`` (inverse-CDF sampling), so a
row never depends on the others in its batch and the Triton kernel can use the same ``u``.
"""

from __future__ import annotations

import torch

#: temperatures below this are greedy (as vLLM's _SAMPLING_EPS).
GREEDY_EPS = 1e-5
_M32 = 0xFFFFFFFF


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding uint32 values."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def uniform_from_seed(seeds: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Counter-based uniforms in [0, 1): float32 ``u = H(seed, offset)``, 24 random bits.

    The Triton sampler computes the identical hash, so both paths see the same ``u``.
    """
    s = seeds.long()
    o = offsets.long()
    h = _fmix32((s & _M32) ^ 0x9E3779B9)
    h = _fmix32(h ^ ((s >> 32) & _M32))
    h = _fmix32(h ^ (o & _M32))
    h = _fmix32(h ^ ((o >> 32) & _M32))
    return (h >> 8).float() * (1.0 / (1 << 24))


def _thresholds(
    p: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Per-row keep threshold on unnormalised probabilities ``p`` (``[R, V]``, max 1)."""
    rows, vocab = p.shape
    t = min_p.float().clamp(min=0.0).clone()
    use_k = (top_k > 0) & (top_k < vocab)
    t_k = torch.zeros(rows, device=p.device)
    if bool(use_k.any()):
        ik = use_k.nonzero().squeeze(1)
        k = top_k[ik].long()
        vals = torch.topk(p[ik], int(k.max()), dim=-1).values
        t_k[ik] = vals.gather(1, (k - 1).unsqueeze(1)).squeeze(1)
        t = torch.maximum(t, t_k)
    use_p = top_p < 1.0
    if bool(use_p.any()):
        ip = use_p.nonzero().squeeze(1)
        sorted_p = torch.sort(p[ip], dim=-1, descending=True).values
        kept = torch.where(sorted_p >= t_k[ip].unsqueeze(1), sorted_p, 0.0)
        csum = kept.cumsum(-1)
        target = top_p[ip].float() * csum[:, -1]
        m = torch.searchsorted(csum, target.unsqueeze(1)).clamp(max=vocab - 1)
        t[ip] = torch.maximum(t[ip], sorted_p.gather(1, m).squeeze(1))
    return t


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
) -> torch.Tensor:
    """Next token per row of ``logits`` ``[B, V]`` (penalties already applied).

    Rows with ``temperature < 1e-5`` are greedy: exact argmax, lowest index on ties. Other rows
    apply temperature, top-k (<=0 or >=V: off), top-p (1: off), min-p (0: off), then sample
    with the row's ``(seed, offset)`` uniform. Only rows using top-p sort; top-k uses topk.
    Returns ``LongTensor[B]``.
    """
    out = torch.argmax(logits, dim=-1)
    sampled = temperature >= GREEDY_EPS
    if not bool(sampled.any()):
        return out
    rows = sampled.nonzero().squeeze(1)
    x = logits[rows].float() / temperature[rows].float().unsqueeze(1)
    # Not exp(x - max): torch.exp takes a slow path on -inf and underflowing inputs, which a
    # grammar's masked rows are full of (64 x 49k: ~10 ms on 2 cores; softmax ~2 ms).
    p = torch.softmax(x, dim=-1)
    p = p / p.amax(dim=-1, keepdim=True)  # unnormalised again: p_max = 1
    filt = (
        ((top_k[rows] > 0) & (top_k[rows] < p.shape[1])) | (top_p[rows] < 1.0) | (min_p[rows] > 0)
    )
    if bool(filt.any()):
        t = _thresholds(p, top_k[rows], top_p[rows], min_p[rows])
        p = torch.where(p >= t.unsqueeze(1), p, 0.0)
    csum = p.cumsum(-1)
    u = uniform_from_seed(seeds[rows], offsets[rows]).to(p.device)
    target = (u * csum[:, -1]).unsqueeze(1)
    tok = torch.searchsorted(csum, target, right=True).squeeze(1)
    out[rows] = tok.clamp(max=p.shape[1] - 1)
    return out


def apply_penalties(
    logits: torch.Tensor,
    output_token_counts: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
    repetition: torch.Tensor,
    prompt_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """vLLM penalties, in place on ``logits`` ``[B, V]``; returns ``logits``.

    repetition: tokens seen in the prompt or output have positive logits divided by, negative
    logits multiplied by, ``repetition``; then ``-= frequency * count`` and
    ``-= presence * (count > 0)``.
    """
    counts = output_token_counts
    seen = counts > 0
    if bool((repetition != 1.0).any()):
        rep_seen = seen if prompt_mask is None else seen | prompt_mask.bool()
        rep = repetition.to(logits.dtype).unsqueeze(1)
        scaled = torch.where(logits > 0, logits / rep, logits * rep)
        logits.copy_(torch.where(rep_seen, scaled, logits))
    if bool((frequency != 0).any()):
        logits -= frequency.to(logits.dtype).unsqueeze(1) * counts.to(logits.dtype)
    if bool((presence != 0).any()):
        logits -= presence.to(logits.dtype).unsqueeze(1) * seen.to(logits.dtype)
    return logits


def compute_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, top_n: int, *, return_rank: bool = False
) -> tuple[torch.Tensor, ...]:
    """Log-probabilities from ``log_softmax(logits.float())``.

    Returns ``(token_logprobs [B], top_ids [B, top_n], top_logprobs [B, top_n])``; with
    ``return_rank=True`` also ``rank [B]`` (1 + number of tokens with a strictly higher logprob,
    one extra compare pass over the vocabulary).
    """
    lp = torch.log_softmax(logits.float(), dim=-1)
    tok = token_ids.long().unsqueeze(1)
    token_lp = lp.gather(1, tok).squeeze(1)
    if top_n > 0:
        top_lp, top_ids = torch.topk(lp, top_n, dim=-1)
    else:
        top_lp = lp.new_empty(lp.shape[0], 0)
        top_ids = torch.empty(lp.shape[0], 0, dtype=torch.long, device=lp.device)
    if return_rank:
        rank = (lp > token_lp.unsqueeze(1)).sum(-1) + 1
        return token_lp, top_ids, top_lp, rank
    return token_lp, top_ids, top_lp


_BITS = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).bool()  # byte -> its 8 bits


def bitmask_rows(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None
) -> torch.Tensor:
    """The logits row of each bitmask row (int64 on CPU), checked against both shapes."""
    n, words = bitmask.shape
    if bitmask.dtype != torch.int32 or words * 32 < logits.shape[1]:
        raise ValueError(
            f"a token bitmask is int32 [rows, ceil(V/32)] for V={logits.shape[1]}, "
            f"got {bitmask.dtype} {tuple(bitmask.shape)}"
        )
    if rows is None:
        if n != logits.shape[0]:
            raise ValueError(f"{n} bitmask rows for {logits.shape[0]} logits rows, no `rows`")
        return torch.arange(n)
    rows = rows.to("cpu", torch.int64).contiguous()
    if rows.shape != (n,) or (n and not 0 <= int(rows.min()) <= int(rows.max()) < len(logits)):
        raise ValueError(f"rows must be {n} indices into {len(logits)} logits rows")
    return rows


def apply_token_bitmask(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Structured outputs: ``-inf`` in place wherever a grammar forbids a token; returns
    ``logits``.

    ``bitmask`` is xgrammar's packed int32 ``[n, ceil(V/32)]`` (bit ``b`` of word ``w`` allows
    token ``32w + b``); its row ``j`` masks logits row ``rows[j]`` (default: row ``j``).
    """
    vocab = logits.shape[1]
    idx = bitmask_rows(logits, bitmask, rows).to(logits.device)
    packed = bitmask.contiguous().view(torch.uint8).long()
    allowed = _BITS.to(logits.device)[packed].view(len(idx), -1)[:, :vocab]
    logits[idx] = logits[idx].masked_fill_(~allowed, float("-inf"))
    return logits
