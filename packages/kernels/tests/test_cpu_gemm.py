"""oneDNN linear on packed weights vs F.linear: batch sizes from 0 to a prefill chunk, bias,
3-D and strided inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leaflm.kernels.cpu import gemm

if not gemm.packing_available():
    pytest.skip("this torch has no usable oneDNN packed linear", allow_module_level=True)


@pytest.mark.parametrize("rows", [0, 1, 7, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear(rows, bias):
    w = torch.randn(96, 80)
    b = torch.randn(96) if bias else None
    x = torch.randn(rows, 80)
    got = gemm.packed_linear(x, gemm.pack_weight(w), b)
    torch.testing.assert_close(got, F.linear(x, w, b), atol=1e-4, rtol=1e-5)


def test_three_dim_and_strided_inputs():
    w = torch.randn(32, 16)
    packed = gemm.pack_weight(w)
    x3 = torch.randn(2, 5, 16)
    torch.testing.assert_close(gemm.packed_linear(x3, packed), F.linear(x3, w))
    strided = torch.randn(6, 40)[:, 8:24]
    torch.testing.assert_close(gemm.packed_linear(strided, packed), F.linear(strided, w))


def test_disable_switch(monkeypatch):
    monkeypatch.setenv("LEAFLM_CPU_KERNELS", "0")
    gemm.packing_available.cache_clear()
    try:
        assert not gemm.packing_available()
    finally:
        monkeypatch.delenv("LEAFLM_CPU_KERNELS")
        gemm.packing_available.cache_clear()
    assert gemm.packing_available()
