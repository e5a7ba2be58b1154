"""Reference sampler, penalties and logprobs: exact greedy, distribution (chi-square), seeding."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from leaflm.kernels import reference as ref
from leaflm.kernels.testing import filtered_probs


def _params(b, temp=1.0, k=-1, p=1.0, mp=0.0):
    return (
        torch.full((b,), temp),
        torch.full((b,), k, dtype=torch.int32),
        torch.full((b,), p),
        torch.full((b,), mp),
    )


def test_greedy_is_exact_argmax_lowest_index_on_ties():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1000, generator=g)
    logits[2, [10, 500]] = 100.0  # tie: lowest index wins
    temp, k, p, mp = _params(6, temp=0.0)
    seeds = torch.arange(6)
    out = ref.sample(logits, temp, k, p, mp, seeds, torch.zeros(6, dtype=torch.long))
    assert out.tolist() == [int(torch.argmax(r)) for r in logits]
    assert out[2] == 10


@pytest.mark.parametrize(
    ("temp", "k", "p", "mp"),
    [
        (1.0, -1, 1.0, 0.0),
        (0.7, 5, 1.0, 0.0),
        (1.3, -1, 0.8, 0.0),
        (1.0, 8, 0.9, 0.05),
        (1.0, -1, 1.0, 0.1),
    ],
)
def test_sampled_frequencies_match_filtered_softmax(temp, k, p, mp):
    g = torch.Generator().manual_seed(3)
    vocab, n = 30, 4000
    row = torch.randn(vocab, generator=g) * 1.5
    logits = row.expand(n, vocab).contiguous()
    t, kk, pp, mm = _params(n, temp, k, p, mp)
    seeds = torch.full((n,), 1234, dtype=torch.long)
    toks = ref.sample(logits, t, kk, pp, mm, seeds, torch.arange(n))
    want = filtered_probs(row, temp, k, p, mp)
    counts = torch.bincount(toks, minlength=vocab).double()
    assert counts[want == 0].sum() == 0, "sampled a filtered-out token"
    keep = want > 0
    stat = chisquare(counts[keep].numpy(), (want[keep] * n).numpy())
    assert stat.pvalue > 1e-3, stat


def test_same_seed_same_tokens_regardless_of_batch():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(8, 500, generator=g)
    t, k, p, mp = _params(8, 1.0, 50, 0.9, 0.0)
    seeds = torch.arange(100, 108)
    offs = torch.arange(8) * 3
    a = ref.sample(logits, t, k, p, mp, seeds, offs)
    b = ref.sample(logits, t, k, p, mp, seeds, offs)
    assert torch.equal(a, b)
    sub = [5, 1, 6]
    c = ref.sample(logits[sub], t[sub], k[sub], p[sub], mp[sub], seeds[sub], offs[sub])
    assert c.tolist() == a[sub].tolist()
    d = ref.sample(logits, t, k, p, mp, seeds, offs + 1)
    assert not torch.equal(a, d)


def test_uniforms_look_uniform():
    u = ref.uniform_from_seed(torch.zeros(20000, dtype=torch.long), torch.arange(20000))
    assert float(u.min()) >= 0 and float(u.max()) < 1
    hist = torch.histc(u, bins=20, min=0, max=1)
    assert chisquare(hist.numpy()).pvalue > 1e-3


def test_apply_penalties_matches_vllm_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    counts = torch.tensor([[2, 1, 0, 0]])
    prompt = torch.tensor([[False, False, True, False]])
    out = ref.apply_penalties(
        logits.clone(),
        counts,
        torch.tensor([0.5]),
        torch.tensor([0.25]),
        torch.tensor([2.0]),
        prompt,
    )
    want = torch.tensor([[2.0 / 2 - 0.5 - 0.5, -2.0 * 2 - 0.25 - 0.5, 1.0 / 2, 0.5]])
    torch.testing.assert_close(out, want)


def test_compute_logprobs():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 50, generator=g)
    toks = torch.tensor([0, 7, 49])
    lp, ids, top, rank = ref.compute_logprobs(logits, toks, 4, return_rank=True)
    full = torch.log_softmax(logits.double(), -1)
    torch.testing.assert_close(lp.double(), full[torch.arange(3), toks], atol=1e-6, rtol=0)
    assert torch.equal(ids, torch.argsort(full, -1, descending=True)[:, :4])
    torch.testing.assert_close(top.double(), full.gather(1, ids), atol=1e-6, rtol=0)
    assert rank.tolist() == [int((full[i] > full[i, toks[i]]).sum()) + 1 for i in range(3)]
