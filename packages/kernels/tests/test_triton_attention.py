"""Triton paged attention vs the reference: odd lengths, block boundaries, GQA 1/4/8, ALiBi,
sliding window, softcap, split-K, head_dim 80, three dtypes; outputs poisoned with NaN."""

from __future__ import annotations

import math

import pytest
import torch

from leaflm.kernels import reference as ref
from leaflm.kernels.testing import make_paged_case

tri = pytest.importorskip("leaflm.kernels.triton")

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}

CASES = [
    # seq_lens, heads, kv_heads, head_dim, page, options
    pytest.param([1, 16, 17, 37], 4, 4, 16, 16, {}, id="gqa1-boundaries"),
    pytest.param([5, 33, 64], 8, 2, 32, 8, {"alibi": True}, id="gqa4-alibi"),
    pytest.param([31, 2, 50], 8, 1, 16, 16, {"sliding_window": 7}, id="gqa8-window"),
    pytest.param([20, 9], 2, 1, 80, 4, {"softcap": 5.0}, id="d80-softcap"),
    pytest.param(
        [45], 4, 1, 16, 16, {"alibi": True, "sliding_window": 20, "softcap": 2.0}, id="all"
    ),
]


def _opts(o: dict, heads: int, device) -> dict:
    slopes = None
    if o.get("alibi"):
        slopes = torch.tensor([2.0 ** (-(i + 1)) for i in range(heads)], device=device)
    return {
        "alibi_slopes": slopes,
        "sliding_window": o.get("sliding_window"),
        "softcap": o.get("softcap"),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("lens", "heads", "kv", "dim", "page", "o"), CASES)
def test_decode(device, dtype, lens, heads, kv, dim, page, o):
    case = make_paged_case(lens, kv, dim, page, dtype=dtype, device=device)
    q = torch.randn(len(lens), heads, dim, device=device).to(dtype)
    opts = _opts(o, heads, device)
    scale = 1 / math.sqrt(dim)
    args = (q, case.key_cache, case.value_cache, case.block_tables, case.seq_lens, scale)
    want = ref.paged_attention_decode(*args, **opts)
    out = torch.full_like(q, float("nan"))
    got = tri.paged_attention_decode(*args, **opts, out=out)
    assert got is out
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("splits", [2, 3])
def test_decode_split_k_reduction(device, splits):
    case = make_paged_case([130, 1, 77], 2, 32, 16, device=device)
    q = torch.randn(3, 4, 32, device=device)
    args = (q, case.key_cache, case.value_cache, case.block_tables, case.seq_lens, 0.2)
    want = ref.paged_attention_decode(*args, sliding_window=100)
    got = tri.paged_attention_decode(*args, sliding_window=100, num_splits=splits)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("lens", "heads", "kv", "dim", "page", "o"), CASES)
def test_prefill(device, dtype, lens, heads, kv, dim, page, o):
    case = make_paged_case(lens, kv, dim, page, dtype=dtype, device=device)
    # full prefill, a single decode token, a suffix over a cached prefix (chunk / cache hit)
    qlens = [n if i % 3 == 0 else (1 if i % 3 == 1 else max(1, n - 13)) for i, n in enumerate(lens)]
    qsl = torch.tensor(
        [0, *torch.tensor(qlens).cumsum(0).tolist()], dtype=torch.int32, device=device
    )
    q = torch.randn(int(qsl[-1]), heads, dim, device=device).to(dtype)
    opts = _opts(o, heads, device)
    scale = 1 / math.sqrt(dim)
    args = (q, case.key_cache, case.value_cache, case.block_tables, qsl, case.seq_lens, scale)
    want = ref.paged_attention_prefill(*args, **opts)
    out = torch.full_like(q, float("nan"))
    got = tri.paged_attention_prefill(*args, **opts, out=out)
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_a_float16_cache_under_float32_queries(device):
    """`kv_cache_dtype="float16"` on a float32 model: keys and values widen as they load."""
    case = make_paged_case([5, 33, 64], 2, 32, 8, dtype=torch.float16, device=device)
    q = torch.randn(3, 8, 32, device=device)
    args = (q, case.key_cache, case.value_cache, case.block_tables, case.seq_lens, 32**-0.5)
    got = tri.paged_attention_decode(*args)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref.paged_attention_decode(*args), atol=2e-5, rtol=2e-5)
    qsl = torch.tensor([0, 5, 6, 26], dtype=torch.int32, device=device)
    q = torch.randn(26, 8, 32, device=device)
    args = (q, case.key_cache, case.value_cache, case.block_tables, qsl, case.seq_lens, 32**-0.5)
    want = ref.paged_attention_prefill(*args)
    torch.testing.assert_close(tri.paged_attention_prefill(*args), want, atol=2e-5, rtol=2e-5)
