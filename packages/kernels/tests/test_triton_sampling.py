"""Fused Triton sampler: exact greedy, same tokens as the reference (same uniforms), filtered
distribution by chi-square, reproducible and independent of the batch around a row."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from leaflm.kernels import reference as ref
from leaflm.kernels.testing import filtered_probs

tri = pytest.importorskip("leaflm.kernels.triton")


def _params(n, device, temp=1.0, k=-1, p=1.0, mp=0.0):
    return (
        torch.full((n,), temp, device=device),
        torch.full((n,), k, dtype=torch.int32, device=device),
        torch.full((n,), p, device=device),
        torch.full((n,), mp, device=device),
    )


def test_greedy_exact(device):
    logits = torch.randn(5, 3000, device=device)
    logits[1, [7, 2999]] = 50.0  # tie: lowest index
    logits[3, -1] = 1e4  # max in the last, partial tile
    t, k, p, mp = _params(5, device, temp=0.0, k=3, p=0.5)
    seeds = torch.arange(5, device=device)
    got = tri.sample(logits, t, k, p, mp, seeds, seeds)
    assert got.tolist() == torch.argmax(logits, -1).tolist()
    assert got[1] == 7 and got[3] == 2999


def test_matches_reference_row_by_row(device):
    g = torch.Generator().manual_seed(0)
    n, vocab = 24, 3000
    logits = (torch.randn(n, vocab, generator=g) * 3).to(device)
    logits[:, 100] = logits[:, 101]  # ties at the top-k / top-p boundary region
    temp = torch.tensor([0.0, 0.5, 1.0, 1.5] * 6, device=device)
    top_k = torch.tensor([-1, 1, 5, 50, 2999, 3000] * 4, dtype=torch.int32, device=device)
    top_p = torch.tensor([1.0, 0.9, 0.5, 0.99, 0.1, 1.0, 0.7, 1.0] * 3, device=device)
    min_p = torch.tensor([0.0, 0.0, 0.05, 0.0, 0.2, 0.0] * 4, device=device)
    seeds = torch.randint(-(2**62), 2**62, (n,), generator=g).to(device)
    offsets = torch.randint(0, 2**40, (n,), generator=g).to(device)
    args = (logits, temp, top_k, top_p, min_p, seeds, offsets)
    got, want = tri.sample(*args), ref.sample(*args)
    # identical uniforms: only float rounding at a CDF boundary could differ
    assert (got == want).float().mean() >= 0.95, (got, want)


@pytest.mark.parametrize(
    ("temp", "k", "p", "mp"),
    [
        (1.0, -1, 1.0, 0.0),
        (0.8, 4, 1.0, 0.0),
        (1.2, -1, 0.7, 0.0),
        (1.0, 6, 0.85, 0.02),
        (1.0, -1, 1.0, 0.3),
    ],
)
def test_chi_square(device, temp, k, p, mp):
    # The interpreter runs ~10-30 ms per row: on CPU fewer rows and a small vocabulary whose
    # probabilities are bounded below, so every kept bin still expects >= 5 draws.
    vocab, n = (12, 240) if device == "cpu" else (40, 8000)
    row = torch.linspace(-1.2, 1.2, vocab)[
        torch.randperm(vocab, generator=torch.Generator().manual_seed(1))
    ]
    logits = row.expand(n, vocab).contiguous().to(device)
    t, kk, pp, mm = _params(n, device, temp, k, p, mp)
    seeds = torch.full((n,), 99, dtype=torch.long, device=device)
    toks = tri.sample(logits, t, kk, pp, mm, seeds, torch.arange(n, device=device)).cpu()
    want = filtered_probs(row, temp, k, p, mp)
    counts = torch.bincount(toks, minlength=vocab).double()
    assert counts[want == 0].sum() == 0, "sampled a filtered-out token"
    keep = want > 0
    assert keep.sum() < vocab or (k, p, mp) == (-1, 1.0, 0.0), "case filters nothing"
    assert chisquare(counts[keep].numpy(), (want[keep] * n).numpy()).pvalue > 1e-3


def test_seeded_and_batch_independent(device):
    logits = torch.randn(6, 700, device=device)
    t, k, p, mp = _params(6, device, 1.0, 40, 0.9, 0.01)
    seeds = torch.arange(10, 16, device=device)
    offs = torch.arange(6, device=device) * 7
    a = tri.sample(logits, t, k, p, mp, seeds, offs)
    assert torch.equal(a, tri.sample(logits, t, k, p, mp, seeds, offs))
    sub = [4, 0]
    b = tri.sample(logits[sub], t[sub], k[sub], p[sub], mp[sub], seeds[sub], offs[sub])
    assert b.tolist() == a[sub].tolist()
