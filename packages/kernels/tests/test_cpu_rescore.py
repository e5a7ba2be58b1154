"""`leaflm.kernels.cpu.rescore`: the C kernel against the PyTorch definition, and what the
definition promises (exact logits near each row's top, the rest left as they were)."""

from __future__ import annotations

import pytest
import torch

from leaflm.kernels.cpu import build, rescore

CASES = [(1, 1000, False), (5, 1003, True), (64, 8192, False)]
needs_kernels = pytest.mark.skipif(build.library() is None, reason="needs the C kernels")


def _case(rows: int, vocab: int, dim: int, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g)
    w = torch.randn(vocab, dim, generator=g) / dim**0.5
    b = torch.randn(vocab, generator=g) if bias else None
    exact = x @ w.T + (b if b is not None else 0.0)
    approx = exact + 0.3 * (torch.rand(rows, vocab, generator=g) - 0.5)  # a head off by <= 0.15
    return x, w, b, exact, approx


@pytest.mark.parametrize("rows, vocab, bias", CASES)
def test_the_definition_makes_the_top_exact_and_leaves_the_rest(rows, vocab, bias):
    x, w, b, exact, approx = _case(rows, vocab, 48, bias)
    margin = 1.0
    near = approx >= approx.max(dim=1, keepdim=True).values - margin
    out = rescore.rescore_near_max_reference(approx.clone(), x, w, b, margin)
    torch.testing.assert_close(out[near], exact[near], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[~near], approx[~near])
    assert torch.equal(out.argmax(dim=1), exact.argmax(dim=1))  # margin >= 2 x the error
    assert 0 < int(near.sum()) < rows * vocab // 4  # a few a row, not everything


@needs_kernels
@pytest.mark.parametrize("rows, vocab, bias", CASES)
def test_kernel_matches_the_definition(rows, vocab, bias):
    x, w, b, _, approx = _case(rows, vocab, 48, bias, seed=rows)
    ref = rescore.rescore_near_max_reference(approx.clone(), x, w, b, 1.0)
    got = approx.clone()
    assert rescore.rescore_near_max(got, x, w, b, 1.0) is got
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_kernel_reads_strided_rows_and_leaves_nan_rows():
    x, w, _, _, approx = _case(3, 500, 32, False)
    wide = torch.zeros(3, 520)
    wide[:, :500] = approx
    wide[1, 7] = float("nan")
    view = wide[:, :500]
    ref = rescore.rescore_near_max_reference(approx.clone(), x, w, None, 1.0)
    rescore.rescore_near_max(view, x, w, None, 1.0)
    torch.testing.assert_close(view[[0, 2]], ref[[0, 2]], atol=1e-5, rtol=1e-5)
    row = approx[1].clone()
    row[7] = float("nan")
    assert torch.equal(view[1].nan_to_num(-1.0), row.nan_to_num(-1.0))
    assert torch.equal(wide[:, 500:], torch.zeros(3, 20))


def test_shapes_that_do_not_fit_are_refused():
    x, w, _, _, approx = _case(2, 100, 16, False)
    with pytest.raises(ValueError, match="weight rows"):
        rescore.rescore_near_max(approx, x, w[:99], None, 1.0)
    with pytest.raises(ValueError, match=r"\[rows, dim\]"):
        rescore.rescore_near_max(approx, x[:, :15], w, None, 1.0)
