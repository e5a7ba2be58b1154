"""Huge-page advice keeps a buffer's contents and never fails loudly."""

from __future__ import annotations

import pytest
import torch

from leaflm.kernels.cpu import gemm, hugepages


def test_advice_keeps_contents_plain_and_packed():
    x = torch.randn(3 * 1024 * 1024)  # 12 MiB: several aligned huge pages
    before = x.clone()
    hugepages.advise_tensor(x)
    assert torch.equal(x, before)
    if gemm.packing_available():
        w = torch.randn(1024, 768)
        packed = gemm.pack_weight(w)  # advised inside
        h = torch.randn(4, 768)
        torch.testing.assert_close(gemm.packed_linear(h, packed), h @ w.T, atol=1e-4, rtol=1e-4)


def test_small_or_foreign_buffers_are_left_alone():
    assert not hugepages.advise_range(4096, 1000)  # no whole 2 MiB page inside
    assert not hugepages.advise_tensor(torch.empty(0, device="meta"))


def test_weight_arena_places_packed_weights_side_by_side():
    if not gemm.packing_available():
        pytest.skip("weights are not packed here")
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, 64, generator=g) for n in (48, 100, 7)]
    with hugepages.weight_arena():
        packed = [gemm.pack_weight(w) for w in weights]
        big = hugepages.empty((3 << 20,))  # a chunk of its own, 2 MiB-aligned
    assert big.data_ptr() % (2 << 20) == 0
    starts = [p.data.data_ptr() for p in packed]
    assert starts[0] % (2 << 20) == 0 and starts == sorted(starts)
    assert starts[2] - starts[0] < 1 << 20  # one chunk, not one allocation each
    h = torch.randn(5, 64, generator=g)
    for w, p in zip(weights, packed, strict=True):
        torch.testing.assert_close(gemm.packed_linear(h, p), h @ w.T, atol=1e-4, rtol=1e-4)
    assert hugepages.empty((16,)).numel() == 16  # outside an arena: a plain tensor
