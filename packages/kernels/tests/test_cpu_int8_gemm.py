"""The W8A8 GEMM (AVX-512 VNNI or AVX2) against its PyTorch reference op, and the reference
against F.linear: odd sizes that leave partial panels, k-groups and activation blocks, batch 1 to
past one row block, bias, gated SiLU, whole-row and blocked activation scales, one thread
and two, and the reference fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leaflm.kernels.cpu import int8_gemm
from leaflm.kernels.reference import layers as ref_layers

needs_kernel = pytest.mark.skipif(
    not int8_gemm.kernel_available(), reason="the int8 GEMM needs C kernels (VNNI or AVX2)"
)


def _inputs(rows: int, out_features: int, in_features: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) / in_features**0.5
    return w, torch.randn(out_features, generator=g), torch.randn(rows, in_features, generator=g)


@needs_kernel
@pytest.mark.parametrize("rows", [0, 1, 2, 3, 4, 64, 193])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("out_features", "in_features"), [(128, 64), (101, 37), (7, 5)])
@pytest.mark.parametrize("block", [32, 8, None])
def test_kernel_matches_reference(rows, bias, out_features, in_features, block):
    w, b, x = _inputs(rows, out_features, in_features, rows * 1000 + out_features)
    b = b if bias else None
    q, s = int8_gemm.quantize_weight(w)
    got = int8_gemm.int8_linear(x, int8_gemm.pack_weight(w, block=block), b)
    torch.testing.assert_close(got, int8_gemm.int8_linear_reference(x, q, s, b, block))


@needs_kernel
@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("intermediate", [64, 45])
def test_gated_kernel_matches_reference(rows, intermediate):
    w, _, x = _inputs(rows, 2 * intermediate, 72, rows + intermediate)
    q, s = int8_gemm.quantize_weight(w)
    expected = ref_layers.silu_and_mul(int8_gemm.int8_linear_reference(x, q, s, None))
    packed = int8_gemm.pack_weight(w, gated=True)
    torch.testing.assert_close(int8_gemm.int8_silu_and_mul(x, packed), expected)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_smollm_shapes_one_thread_and_two(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for out_features, in_features in ((576, 576), (576, 1536)):
            w, b, _ = _inputs(0, out_features, in_features, out_features + in_features)
            q, s = int8_gemm.quantize_weight(w)
            packed = int8_gemm.pack_weight(w)
            for rows in (1, 64, 401):
                x = torch.randn(rows, in_features)
                torch.testing.assert_close(
                    int8_gemm.int8_linear(x, packed, b),
                    int8_gemm.int8_linear_reference(x, q, s, b),
                )
    finally:
        torch.set_num_threads(previous)


@needs_kernel
@pytest.mark.parametrize("pattern", ["all plus", "weights minus", "random signs"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5])
def test_extreme_products_are_exact(pattern, rows):
    """Weights and activations all at +-127 (every pair of products at 2 * 127 * 127, where a
    stored u8 weight of 255 fed to AVX2's saturating byte multiply-add would clip): the kernel's
    sums are the exact integer dot products, as the reference's."""
    g = torch.Generator().manual_seed(rows)
    w, x = torch.ones(40, 96), torch.ones(rows, 96)
    if pattern == "weights minus":
        w = -w
    elif pattern == "random signs":
        w = torch.randint(0, 2, w.shape, generator=g).float() * 2 - 1
        x = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
    q, s = int8_gemm.quantize_weight(w)
    assert q.abs().min() == 127 and torch.equal(s, torch.full((40,), 1 / 127))
    exact = (x.double() * 127) @ (w.double() * 127).t()  # the int32 dot products
    got = int8_gemm.int8_linear(x, int8_gemm.pack_weight(w), None)
    assert torch.equal(torch.round(got.double() * 127 * 127), exact)
    torch.testing.assert_close(got, int8_gemm.int8_linear_reference(x, q, s, None))


@needs_kernel
def test_three_dim_strided_inputs_and_rows():
    w, _, _ = _inputs(0, 70, 24, 3)
    packed = int8_gemm.pack_weight(w)
    q, s = int8_gemm.quantize_weight(w)
    x3 = torch.randn(2, 5, 24)
    torch.testing.assert_close(
        int8_gemm.int8_linear(x3, packed), int8_gemm.int8_linear_reference(x3, q, s, None)
    )
    strided = torch.randn(6, 40)[:, 8:32]
    torch.testing.assert_close(
        int8_gemm.int8_linear(strided, packed),
        int8_gemm.int8_linear_reference(strided, q, s, None),
    )
    back_q, back_s = int8_gemm.plain_int8(packed)
    assert torch.equal(back_q, q) and torch.equal(back_s, s)
    ids = torch.tensor([0, 63, 64, 69, 5])
    torch.testing.assert_close(int8_gemm.int8_rows(packed, ids), q[ids].float() * s[ids, None])


@pytest.mark.parametrize("rows", [1, 64])
def test_reference_is_close_to_float(rows):
    """int8 keeps a 576-wide projection within ~1% of the float result, and blocks of 32
    activation values beat one scale per row when a few channels are outliers."""
    w, b, x = _inputs(rows, 256, 576, rows)
    q, s = int8_gemm.quantize_weight(w)
    got, exact = int8_gemm.int8_linear_reference(x, q, s, b), F.linear(x, w, b)
    assert (got - exact).norm() / exact.norm() < 0.02
    x[:, :4] *= 50  # outlier channels, as RMSNorm outputs have
    exact = F.linear(x, w, b)
    errors = [
        (int8_gemm.int8_linear_reference(x, q, s, b, block) - exact).norm() / exact.norm()
        for block in (32, None)
    ]
    assert errors[0] < 0.5 * errors[1]


def test_quantization_is_symmetric_per_row():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [3.0, 3.0, -3.0]])
    q, s = int8_gemm.quantize_weight(w)
    assert q.dtype == torch.int8 and q.abs().amax(dim=1).tolist() == [127, 0, 127]
    torch.testing.assert_close(s, torch.tensor([2.0, 0.0, 3.0]) / 127)
    torch.testing.assert_close(q.float() * s[:, None], w, atol=2.0 / 254, rtol=0)


def test_reference_fallback_without_the_kernel(monkeypatch):
    """No kernel build: the weight stays plain int8 and every call runs the reference op."""
    monkeypatch.setattr(int8_gemm, "panel_width", lambda: 0)
    w, b, x = _inputs(3, 40, 24, 9)
    packed = int8_gemm.pack_weight(w)
    assert packed.panel_width == 0 and packed.data.shape == (40, 24)
    assert packed.data.dtype == torch.int8
    q, s = int8_gemm.quantize_weight(w)
    assert torch.equal(
        int8_gemm.int8_linear(x, packed, b), int8_gemm.int8_linear_reference(x, q, s, b)
    )
    gated = int8_gemm.pack_weight(w, gated=True)
    expected = ref_layers.silu_and_mul(int8_gemm.int8_linear_reference(x, q, s, None))
    torch.testing.assert_close(int8_gemm.int8_silu_and_mul(x, gated), expected)


def test_simd_names_the_path():
    assert int8_gemm.simd() in ("AVX-512 VNNI", "AVX2", "reference")
    assert (int8_gemm.simd() == "reference") == (not int8_gemm.kernel_available())
    widths = {"AVX-512 VNNI": 64, "AVX2": 16, "reference": int8_gemm.panel_width()}
    assert int8_gemm.panel_width() == widths[int8_gemm.simd()]


def test_bad_inputs_are_named():
    packed = int8_gemm.pack_weight(torch.randn(8, 16))
    with pytest.raises(ValueError, match="gated=True"):
        int8_gemm.int8_silu_and_mul(torch.randn(2, 16), packed)
    with pytest.raises(ValueError, match="gate; up"):
        int8_gemm.pack_weight(torch.randn(7, 16), gated=True)
    with pytest.raises(ValueError, match="multiple of 4"):
        int8_gemm.pack_weight(torch.randn(8, 16), block=6)
    if packed.panel_width:
        with pytest.raises(ValueError, match=r"float32 \[\.\.\., 16\]"):
            int8_gemm.int8_linear(torch.randn(2, 15), packed)
