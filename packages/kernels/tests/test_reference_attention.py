"""The reference attention ops against dense float64 attention (they are the specification)."""

from __future__ import annotations

import math

import pytest
import torch

from leaflm.kernels import reference as ref
from leaflm.kernels.testing import dense_attention_f64, make_paged_case

CASES = [
    # seq_lens, heads, kv_heads, head_dim, block_size, options
    ([1, 16, 17, 40], 4, 4, 16, 16, {}),
    ([5, 33], 8, 2, 32, 8, {"alibi": True}),
    ([31, 64, 2], 8, 1, 16, 16, {"sliding_window": 7}),
    ([20, 9], 4, 1, 80, 4, {"softcap": 5.0}),
    ([50], 8, 2, 16, 16, {"alibi": True, "sliding_window": 16, "softcap": 2.0}),
]


def _opts(o: dict, heads: int) -> dict:
    slopes = torch.tensor([2.0 ** (-(i + 1) / 2) for i in range(heads)]) if o.get("alibi") else None
    return {
        "alibi_slopes": slopes,
        "sliding_window": o.get("sliding_window"),
        "softcap": o.get("softcap"),
    }


@pytest.mark.parametrize(("lens", "heads", "kv", "dim", "bs", "o"), CASES)
def test_decode_matches_dense(lens, heads, kv, dim, bs, o):
    g = torch.Generator().manual_seed(0)
    case = make_paged_case(lens, kv, dim, bs, generator=g)
    q = torch.randn(len(lens), heads, dim, generator=g)
    scale = 1 / math.sqrt(dim)
    opts = _opts(o, heads)
    out = torch.full_like(q, float("nan"))
    ref.paged_attention_decode(
        q,
        case.key_cache,
        case.value_cache,
        case.block_tables,
        case.seq_lens,
        scale,
        out=out,
        **opts,
    )
    for i in range(len(lens)):
        want = dense_attention_f64(q[i : i + 1], case.keys[i], case.values[i], scale, **opts)
        torch.testing.assert_close(out[i : i + 1].double(), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("lens", "heads", "kv", "dim", "bs", "o"), CASES)
def test_prefill_matches_dense(lens, heads, kv, dim, bs, o):
    g = torch.Generator().manual_seed(1)
    case = make_paged_case(lens, kv, dim, bs, generator=g)
    # new tokens: all (full prefill), 1 (decode row), or a suffix (prefix-cache hit / chunk)
    qlens = [n if i % 3 == 0 else (1 if i % 3 == 1 else max(1, n // 2)) for i, n in enumerate(lens)]
    qsl = torch.tensor([0, *torch.tensor(qlens).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(int(qsl[-1]), heads, dim, generator=g)
    scale = 1 / math.sqrt(dim)
    opts = _opts(o, heads)
    out = torch.full_like(q, float("nan"))
    ref.paged_attention_prefill(
        q, case.key_cache, case.value_cache, case.block_tables, qsl, case.seq_lens, scale,
        out=out, **opts,
    )  # fmt: skip
    for i in range(len(lens)):
        a, b = int(qsl[i]), int(qsl[i + 1])
        want = dense_attention_f64(q[a:b], case.keys[i], case.values[i], scale, **opts)
        torch.testing.assert_close(out[a:b].double(), want, atol=2e-5, rtol=1e-5)


def test_write_kv_cache_scatters_and_skips():
    g = torch.Generator().manual_seed(2)
    kc = torch.zeros(4, 4, 2, 8)
    vc = torch.zeros(4, 4, 2, 8)
    k, v = torch.randn(5, 2, 8, generator=g), torch.randn(5, 2, 8, generator=g)
    slots = torch.tensor([0, 7, -1, 13, 15], dtype=torch.int32)
    ref.write_kv_cache(k, v, kc, vc, slots)
    flat_k, flat_v = kc.view(16, 2, 8), vc.view(16, 2, 8)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(flat_k[s], k[t]) and torch.equal(flat_v[s], v[t])
    written = {s for s in slots.tolist() if s >= 0}
    untouched = [i for i in range(16) if i not in written]
    assert flat_k[untouched].abs().sum() == 0 and flat_v[untouched].abs().sum() == 0
