"""Huge-page advice keeps a buffer's contents and never fails loudly."""

from __future__ import annotations

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
