"""GGUF block kernels: the packed layout reads back as the `gguf` package dequantizes the
file's blocks; the C kernel equals the reference op (same activation quantization) to float
rounding and a plain fp32 matmul of the dequantized weight loosely; the activation
quantization in C and in PyTorch agree bit for bit; row lookups dequantize only those rows."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leaflm.kernels.cpu import build, gguf_blocks, gguf_gemm

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

Q = gguf.GGMLQuantizationType
SIMPLE = {"Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1, "Q8_0": Q.Q8_0}
TYPES = {**SIMPLE, "Q4_K": Q.Q4_K, "Q6_K": Q.Q6_K}


def _cols(name: str, cols: int) -> int:
    """K-quants need whole super-blocks of 256 inputs."""
    return cols if name in SIMPLE else -(-cols // 256) * 256


def _raw(rows: int, cols: int, qtype, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """File blocks (quantized by gguf-py, or random for the K types it cannot quantize) and
    their values as gguf-py dequantizes them."""
    if qtype in SIMPLE.values():
        w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) / 8
        raw = quantize(w, qtype)
    else:
        raw = gguf_blocks.random_blocks(qtype, rows, cols, seed)
    return raw, dequantize(raw, qtype).reshape(rows, cols)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("rows", [1, 16, 37])
def test_packed_blocks_read_back_as_gguf_dequantizes(name, rows):
    cols = _cols(name, 96)
    fmt = gguf_blocks.block_format(TYPES[name])
    raw, want = _raw(rows, cols, TYPES[name], rows)
    q, d, m = gguf_blocks.parse(raw, TYPES[name], rows, cols)
    torch.testing.assert_close(
        gguf_blocks.dequantize(q, d, m), torch.from_numpy(want), rtol=1e-6, atol=1e-7
    )
    packed = gguf_blocks.pack(raw, TYPES[name], rows, cols)
    assert packed.shape == (-(-rows // 16), cols // fmt.elems, fmt.panel_bytes)
    if rows % 16 == 0:  # the same bytes reordered (Q4_K: its 12 scale bytes unpacked to 16)
        extra = 4 * rows * (cols // 256) if name == "Q4_K" else 0
        assert packed.numel() == raw.size + extra
    picked = torch.tensor([rows - 1, 0, rows // 2])
    got = gguf_blocks.unpack_rows(packed, TYPES[name], picked)
    for part, ref in zip(got, (q, d, m), strict=True):
        if ref is None:
            assert part is None
        else:
            assert torch.equal(part, ref[picked])


def test_bad_shapes_and_types_are_value_errors():
    raw, _ = _raw(4, 64, TYPES["Q8_0"], 0)
    with pytest.raises(ValueError, match="takes"):
        gguf_blocks.pack(raw, TYPES["Q8_0"], 5, 64)
    with pytest.raises(ValueError, match="whole blocks"):
        gguf_blocks.pack(raw, TYPES["Q8_0"], 4, 60)
    with pytest.raises(ValueError, match="supported"):
        gguf_blocks.block_format(Q.Q5_K)
    raw = gguf_blocks.random_blocks(Q.Q4_K, 2, 256)
    with pytest.raises(ValueError, match="whole blocks of 256"):
        gguf_blocks.pack(raw, Q.Q4_K, 4, 128)


needs_c = pytest.mark.skipif(not gguf_gemm.available(), reason="no C kernels on this machine")


@needs_c
def test_activation_quantization_in_c_matches_pytorch():
    g = torch.Generator().manual_seed(0)
    m, k = 300, 1024
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 2, k)
    x[3, :32] = 0.0  # an all-zero block: scale 0
    q = torch.empty(m, k, dtype=torch.int8)
    d = torch.empty(m, k // 32)
    s = torch.empty(m, k // 16, dtype=torch.int32)  # sums over 16 inputs
    build.require_library().leaflm_gguf_quantize_rows(
        x.data_ptr(), k, m, k, q.data_ptr(), d.data_ptr(), s.data_ptr()
    )
    rq, rd, rs = gguf_gemm.quantize_activations(x)
    assert torch.equal(q.view(m, k // 32, 32).float(), rq)
    assert torch.equal(d, rd)
    assert torch.equal(s.view(m, k // 32, 2).sum(-1).float(), rs)


@needs_c
@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("m", [0, 1, 3, 8, 9, 64, 130])
@pytest.mark.parametrize("n", [16, 45])
def test_kernel_matches_reference(name, m, n):
    k = _cols(name, 160)
    raw, w = _raw(n, k, TYPES[name], m * 100 + n)
    weight = gguf_gemm.pack_gguf_weight(raw, TYPES[name], n, k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    got = gguf_gemm.gguf_linear(x, weight)
    want = gguf_gemm.reference_gguf_linear(x, weight)
    torch.testing.assert_close(got, want.float(), atol=2e-5 * (k / 160) ** 0.5, rtol=1e-5)
    # activation quantization is the only difference from the dequantized fp32 matmul
    dense = F.linear(x, torch.from_numpy(w))
    if m:
        err = (got - dense).norm() / dense.norm()
        assert err < 0.02, err


# the quant bytes of each file block, and the two extreme byte values (all nibbles / 6-bit
# values 0 or at their top; Q8_0: -128 and 127)
_QUANT_BYTES = {
    "Q4_0": (slice(2, 18), (0x00, 0xFF)), "Q4_1": (slice(4, 20), (0x00, 0xFF)),
    "Q8_0": (slice(2, 34), (0x80, 0x7F)), "Q4_K": (slice(16, 144), (0x00, 0xFF)),
    "Q6_K": (slice(0, 192), (0x00, 0xFF)),
}  # fmt: skip


@needs_c
@pytest.mark.parametrize("name", TYPES)
def test_kernel_integer_sums_at_their_extremes(name):
    """Quants at their extremes times activations of +-127, every sign arrangement: the
    largest integer dot products a block can have (AVX2 sums byte products in int16, which
    saturates past 32767), summed over 24 rows (a panel and a half) and 5 activation rows."""
    n, k = 24, 512
    fmt = gguf_blocks.block_format(TYPES[name])
    raw = gguf_blocks.random_blocks(TYPES[name], n, k, seed=7)
    blocks = raw.reshape(n, k // fmt.elems, fmt.block_bytes)
    where, (low, high) = _QUANT_BYTES[name]
    rng = np.random.default_rng(0)
    blocks[0, :, where], blocks[1, :, where] = high, low  # every quant at one end
    mixed = rng.integers(0, 2, blocks[2:, :, where].shape).astype(bool)
    blocks[2:, :, where] = np.where(mixed, high, low)
    weight = gguf_gemm.pack_gguf_weight(raw, TYPES[name], n, k)
    signs = torch.ones(5, k)
    signs[1] = -1.0
    signs[2, 1::2] = -1.0
    signs[3] = torch.from_numpy(rng.choice([-1.0, 1.0], k)).float()
    signs[4, 256:] = -1.0
    x = signs * 0.5  # every block's amax: all activations quantize to +-127
    assert gguf_gemm.quantize_activations(x)[0].abs().eq(127).all()
    got = gguf_gemm.gguf_linear(x, weight)
    want = gguf_gemm.reference_gguf_linear(x, weight).float()
    torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=1e-5)


@needs_c
@pytest.mark.parametrize("threads", [1, 2])
def test_smollm_shapes_3d_strided_and_bias(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        raw, _ = _raw(192, 576, TYPES["Q4_1"], 5)
        weight = gguf_gemm.pack_gguf_weight(torch.from_numpy(raw), TYPES["Q4_1"], 192, 576)
        bias = torch.randn(192)
        x = torch.randn(2, 40, 1152)[..., ::2]  # strided rows, 3-D
        got = gguf_gemm.gguf_linear(x, weight, bias)
        assert got.shape == (2, 40, 192)
        want = gguf_gemm.reference_gguf_linear(x, weight, bias).float()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    finally:
        torch.set_num_threads(previous)


def test_reference_op_runs_without_the_c_kernels(monkeypatch):
    raw, _ = _raw(20, 64, TYPES["Q4_0"], 1)
    weight = gguf_gemm.pack_gguf_weight(raw, TYPES["Q4_0"], 20, 64)
    x = torch.randn(3, 64)
    monkeypatch.setattr(build, "library", lambda: None)
    assert gguf_gemm.simd() == "reference"
    got = gguf_gemm.gguf_linear(x, weight)
    torch.testing.assert_close(got, gguf_gemm.reference_gguf_linear(x, weight).float())
    with pytest.raises(ValueError, match="float32"):
        gguf_gemm.gguf_linear(x.double(), weight)


@pytest.mark.parametrize("name", TYPES)
def test_rows_lookup_dequantizes_the_looked_up_rows(name):
    k = _cols(name, 64)
    raw, w = _raw(50, k, TYPES[name], 3)
    weight = gguf_gemm.pack_gguf_weight(raw, TYPES[name], 50, k)
    ids = torch.tensor([[4, 49], [0, 4]])
    got = gguf_gemm.gguf_rows(weight, ids)
    assert got.shape == (2, 2, k)
    torch.testing.assert_close(got, torch.from_numpy(w)[ids], rtol=1e-6, atol=1e-7)
    reference = gguf_gemm.reference_gguf_rows(weight, ids)
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-7)
    if build.library() is not None:
        with pytest.raises(IndexError, match=r"outside \[0, 50\)"):
            gguf_gemm.gguf_rows(weight, torch.tensor([50]))


def test_library_declares_the_kernels():
    lib = build.library()
    if lib is None:
        pytest.skip(build.unavailable_reason())
    assert lib.leaflm_gguf_block_stride(3) == 320
    assert lib.leaflm_gguf_unit_bytes(12) == 16 * 148  # a Q4_K super-block of 16 rows
    assert lib.leaflm_gguf_unit_bytes(14) == 16 * 210  # Q6_K: the file's own size
    assert lib.leaflm_gguf_unit_bytes(13) == 0  # Q5_K: no kernel
    assert isinstance(lib.leaflm_gguf_vnni(), int)
    assert gguf_gemm.simd() in ("AVX-512 VNNI", "AVX2", "portable C")
    assert (gguf_gemm.simd() == "AVX-512 VNNI") == gguf_gemm.vnni()
    gemm_fn = lib.leaflm_gguf_gemm.fn  # calls go through the CPU-graph recorder
    assert isinstance(gemm_fn, ctypes._CFuncPtr) and gemm_fn.argtypes
