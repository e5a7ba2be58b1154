"""Linear on packed weights vs F.linear, for leaflm's panels and oneDNN's layout: batch sizes
from 0 to past one row block, widths that leave a partial last panel, bias, 3-D and strided
inputs, one thread and two."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leaflm.kernels.cpu import gemm

if not gemm.packing_available():
    pytest.skip("no packed CPU linear on this machine", allow_module_level=True)

LAYOUTS = ["leaflm", "onednn"]


@pytest.fixture(params=LAYOUTS)
def layout(request, monkeypatch):
    """Packs with the given layout (leaflm's needs an AVX-512 build of the C kernels)."""
    gemm.panel_width.cache_clear()
    if request.param == "onednn":
        monkeypatch.setenv(gemm.GEMM_VAR, "onednn")
    elif not gemm.panel_width():
        pytest.skip("leaflm's GEMM needs AVX-512")
    yield request.param
    monkeypatch.delenv(gemm.GEMM_VAR, raising=False)
    gemm.panel_width.cache_clear()


@pytest.mark.parametrize("rows", [0, 1, 7, 8, 9, 64, 200, 300])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("out_features", [96, 101, 7])
def test_packed_linear_matches_f_linear(layout, rows, bias, out_features):
    g = torch.Generator().manual_seed(rows * 1000 + out_features)
    w = torch.randn(out_features, 80, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    x = torch.randn(rows, 80, generator=g)
    packed = gemm.pack_weight(w)
    assert (packed.panel_width > 0) == (layout == "leaflm")
    got = gemm.packed_linear(x, packed, b)
    torch.testing.assert_close(got, F.linear(x, w, b), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_and_prefill_sized_batches(layout, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        w = torch.randn(960, 576) / 24
        packed = gemm.pack_weight(w)
        for rows in (64, 401):
            x = torch.randn(rows, 576)
            torch.testing.assert_close(
                gemm.packed_linear(x, packed), F.linear(x, w), atol=1e-4, rtol=1e-4
            )
    finally:
        torch.set_num_threads(previous)


def test_three_dim_and_strided_inputs(layout):
    w = torch.randn(32, 16)
    packed = gemm.pack_weight(w)
    x3 = torch.randn(2, 5, 16)
    torch.testing.assert_close(gemm.packed_linear(x3, packed), F.linear(x3, w))
    strided = torch.randn(6, 40)[:, 8:24]
    torch.testing.assert_close(gemm.packed_linear(strided, packed), F.linear(strided, w))
    columns = torch.randn(16, 6).t()  # last-dim stride != 1: copied first
    torch.testing.assert_close(gemm.packed_linear(columns, packed), F.linear(columns, w))


def test_packing_copies_the_weight(layout):
    w = torch.randn(50, 24)
    packed = gemm.pack_weight(w)
    expected = F.linear(torch.ones(1, 24), w)
    w.zero_()  # the model frees its plain weight after packing
    torch.testing.assert_close(gemm.packed_linear(torch.ones(1, 24), packed), expected)


def test_wrong_input_is_refused():
    gemm.panel_width.cache_clear()
    if not gemm.panel_width():
        pytest.skip("leaflm's GEMM needs AVX-512")
    packed = gemm.pack_weight(torch.randn(8, 16))
    with pytest.raises(ValueError, match=r"float32 \[\.\.\., 16\]"):
        gemm.packed_linear(torch.randn(2, 15), packed)
    with pytest.raises(ValueError, match="float64"):
        gemm.packed_linear(torch.randn(2, 16, dtype=torch.float64), packed)


def test_disable_switch(monkeypatch):
    monkeypatch.setenv("LEAFLM_CPU_KERNELS", "0")
    gemm.packing_available.cache_clear()
    try:
        assert not gemm.packing_available()
    finally:
        monkeypatch.delenv("LEAFLM_CPU_KERNELS")
        gemm.packing_available.cache_clear()
    assert gemm.packing_available()


@pytest.mark.parametrize("rows", [0, 1, 9, 64, 200])
@pytest.mark.parametrize("intermediate", [24, 50, 96])
def test_gated_silu_and_mul_matches_reference(rows, intermediate):
    """The gated GEMM == silu_and_mul(F.linear(x, [gate; up])) of the reference ops."""
    from leaflm.kernels import reference

    gemm.panel_width.cache_clear()
    g = torch.Generator().manual_seed(rows + intermediate)
    w = torch.randn(2 * intermediate, 40, generator=g) / 6
    packed = gemm.pack_gated_weight(w)
    if packed is None:
        pytest.skip("leaflm's GEMM needs AVX-512")
    x = torch.randn(rows, 40, generator=g)
    expected = reference.silu_and_mul(F.linear(x, w))
    torch.testing.assert_close(gemm.packed_silu_and_mul(x, packed), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="packed_silu_and_mul"):
        gemm.packed_linear(x, packed)
    with pytest.raises(ValueError, match="pack_gated_weight"):
        gemm.packed_silu_and_mul(x, gemm.pack_weight(w))


@pytest.mark.parametrize("out_features", [96, 101, 7])
def test_packed_rows_read_back_the_original_rows(layout, out_features):
    g = torch.Generator().manual_seed(out_features)
    w = torch.randn(out_features, 80, generator=g)
    packed = gemm.pack_weight(w)
    rows = torch.tensor([0, out_features - 1, 3 % out_features, 0, out_features // 2])
    if layout == "onednn":
        with pytest.raises(ValueError, match="addressable rows"):
            gemm.packed_rows(packed, rows)
        return
    assert torch.equal(gemm.packed_rows(packed, rows), w[rows])
    assert torch.equal(gemm.packed_rows(packed, rows.view(1, -1)), w[rows].view(1, 5, 80))
