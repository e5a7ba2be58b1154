"""The C paged-attention kernel (float32 queries, float32 or float16 cache) vs the reference:
odd lengths, block boundaries, GQA 1/4/8, ALiBi, sliding window, softcap, head_dim 80, prefill
over cached prefixes, and non-contiguous outputs. The kernel is built here from source; a machine without a C compiler
skips these tests (CI has one, so they run there)."""

from __future__ import annotations

import math

import pytest
import torch

from leaflm.kernels import reference as ref
from leaflm.kernels.cpu import library, unavailable_reason
from leaflm.kernels.testing import make_paged_case

if library() is None:
    pytest.skip(f"CPU kernels unavailable: {unavailable_reason()}", allow_module_level=True)

from leaflm.kernels.cpu import attention as cpu

TOL = 2e-5

CASES = [
    # seq_lens, heads, kv_heads, head_dim, page, options
    pytest.param([1, 16, 17, 37], 4, 4, 16, 16, {}, id="gqa1-boundaries"),
    pytest.param([5, 33, 64], 8, 2, 32, 8, {"alibi": True}, id="gqa4-alibi"),
    pytest.param([31, 2, 50], 8, 1, 16, 16, {"sliding_window": 7}, id="gqa8-window"),
    pytest.param([20, 9], 2, 1, 80, 4, {"softcap": 5.0}, id="d80-softcap"),
    pytest.param([45, 300], 9, 3, 64, 16, {}, id="smollm-heads"),
    # one row: on one thread at a decode's usual context, its heads split from ~2k tokens
    pytest.param([136], 9, 3, 64, 16, {}, id="one-row"),
    pytest.param([2100], 9, 3, 64, 16, {}, id="one-row-long"),
    pytest.param([7, 40], 8, 1, 128, 16, {}, id="d128-gqa8"),
    pytest.param(
        [45], 4, 1, 16, 16, {"alibi": True, "sliding_window": 20, "softcap": 2.0}, id="all"
    ),
]


def _opts(o: dict, heads: int) -> dict:
    slopes = None
    if o.get("alibi"):
        slopes = torch.tensor([2.0 ** (-(i + 1)) for i in range(heads)])
    return {
        "alibi_slopes": slopes,
        "sliding_window": o.get("sliding_window"),
        "softcap": o.get("softcap"),
    }


CACHE_DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float16, id="f16")]


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("lens", "heads", "kv", "dim", "page", "o"), CASES)
def test_decode_matches_reference(lens, heads, kv, dim, page, o, threads, cache_dtype):
    case = make_paged_case(lens, kv, dim, page, dtype=cache_dtype)
    q = torch.randn(len(lens), heads, dim)
    opts = _opts(o, heads)
    args = (
        q,
        case.key_cache,
        case.value_cache,
        case.block_tables,
        case.seq_lens,
        1 / math.sqrt(dim),
    )
    want = ref.paged_attention_decode(*args, **opts)
    out = torch.full_like(q, float("nan"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu.paged_attention_decode(*args, **opts, out=out)
    finally:
        torch.set_num_threads(previous)
    assert got is out
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
@pytest.mark.parametrize(("lens", "heads", "kv", "dim", "page", "o"), CASES)
def test_prefill_matches_reference(lens, heads, kv, dim, page, o, cache_dtype):
    case = make_paged_case(lens, kv, dim, page, dtype=cache_dtype)
    # full prefill, a single decode token, a suffix over a cached prefix (chunk / cache hit)
    qlens = [n if i % 3 == 0 else (1 if i % 3 == 1 else max(1, n - 13)) for i, n in enumerate(lens)]
    qsl = torch.tensor([0, *torch.tensor(qlens).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(int(qsl[-1]), heads, dim)
    opts = _opts(o, heads)
    scale = 1 / math.sqrt(dim)
    args = (q, case.key_cache, case.value_cache, case.block_tables, qsl, case.seq_lens, scale)
    want = ref.paged_attention_prefill(*args, **opts)
    got = cpu.paged_attention_prefill(*args, **opts)
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)


def test_writes_into_a_strided_out():
    case = make_paged_case([7, 40], 2, 16, 16)
    q = torch.randn(2, 4, 16)
    args = (q, case.key_cache, case.value_cache, case.block_tables, case.seq_lens, 0.25)
    backing = torch.full((2, 4, 32), float("nan"))
    out = backing[..., :16]  # not contiguous
    cpu.paged_attention_decode(*args, out=out)
    torch.testing.assert_close(out, ref.paged_attention_decode(*args), atol=TOL, rtol=TOL)
    assert torch.isnan(backing[..., 16:]).all()


def test_empty_batch():
    case = make_paged_case([3], 1, 16, 16)
    q = torch.randn(0, 2, 16)
    tables = case.block_tables[:0]
    got = cpu.paged_attention_decode(
        q, case.key_cache, case.value_cache, tables, case.seq_lens[:0], 1.0
    )
    assert got.shape == (0, 2, 16)


def test_write_kv_cache_matches_reference_with_strided_rows_and_skips():
    kv, dim, tokens = 3, 16, 9
    fused = torch.randn(tokens, (4 + 2 * kv) * dim)  # q | k | v, as a fused projection
    k = fused[:, 4 * dim : (4 + kv) * dim].view(tokens, kv, dim)
    v = fused[:, (4 + kv) * dim :].view(tokens, kv, dim)
    slots = torch.randperm(40)[:tokens]
    slots[3] = -1
    want_k, want_v = torch.zeros(5, 8, kv, dim), torch.zeros(5, 8, kv, dim)
    ref.write_kv_cache(k, v, want_k, want_v, slots)
    got_k, got_v = torch.zeros_like(want_k), torch.zeros_like(want_v)
    cpu.write_kv_cache(k, v, got_k, got_v, slots)
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)


def test_write_kv_cache_rounds_into_a_half_cache_as_torch_casts():
    """Rows of 60 halves: the vector converter's 16-wide chunks and the scalar tail; values
    past the half range, at its subnormals, ties to even, infinities and NaN."""
    kv, dim, tokens = 3, 20, 6
    k = torch.randn(tokens, kv, dim) * 10.0 ** torch.randint(-9, 6, (tokens, kv, dim)).float()
    v = torch.randn(tokens, kv, dim)
    k[0, 0, :6] = torch.tensor([65504.0, 65520.0, 1e9, -float("inf"), float("nan"), 2.0**-25])
    k[0, 2, -6:] = torch.tensor([65520.0, 6e-8, -3e-8, 2.0**-24 * 1.5, 1 + 2.0**-11, 2.0**-14])
    slots = torch.tensor([3, 17, -1, 30, 0, 39])
    want_k, want_v = (torch.zeros(5, 8, kv, dim, dtype=torch.float16) for _ in range(2))
    ref.write_kv_cache(k, v, want_k, want_v, slots)
    got_k, got_v = torch.zeros_like(want_k), torch.zeros_like(want_v)
    cpu.write_kv_cache(k, v, got_k, got_v, slots)
    same = lambda a, b: torch.equal(a.view(torch.int16), b.view(torch.int16))  # noqa: E731
    assert same(got_v, want_v)
    assert same(got_k.nan_to_num(), want_k.nan_to_num()) and got_k.isnan().equal(want_k.isnan())


def test_decode_reads_strided_query_rows():
    case = make_paged_case([7, 40, 3], 1, 16, 8)
    fused = torch.randn(3, 6 * 16)
    q = fused[:, : 4 * 16].view(3, 4, 16)  # rows 96 apart
    args = (q, case.key_cache, case.value_cache, case.block_tables, case.seq_lens, 0.25)
    torch.testing.assert_close(
        cpu.paged_attention_decode(*args), ref.paged_attention_decode(*args), atol=TOL, rtol=TOL
    )
