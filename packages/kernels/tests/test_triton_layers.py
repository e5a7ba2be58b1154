"""Triton layer kernels vs the references: fresh random data, outputs poisoned, odd sizes."""

from __future__ import annotations

import pytest
import torch

from leaflm.kernels import build_cos_sin_cache
from leaflm.kernels import reference as ref

tri = pytest.importorskip("leaflm.kernels.triton")

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _close(a, b, dtype):
    torch.testing.assert_close(a.float().cpu(), b.float().cpu(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 8), (7, 96), (3, 2, 130)])
def test_rms_norm(device, dtype, shape):
    x = torch.randn(shape, device=device).to(dtype)
    r = torch.randn(shape, device=device).to(dtype)
    w = torch.randn(shape[-1], device=device).to(dtype)
    _close(tri.rms_norm(x, w, 1e-5), ref.rms_norm(x, w, 1e-5), dtype)
    out, new_res = tri.rms_norm(x, w, 1e-5, r)
    want_out, want_res = ref.rms_norm(x, w, 1e-5, r)
    _close(out, want_out, dtype)
    _close(new_res, want_res, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["silu", "gelu_tanh", "gelu_none"])
def test_act_and_mul(device, dtype, op):
    x = torch.randn(5, 3, 2 * 75, device=device).to(dtype)
    if op == "silu":
        got, want = tri.silu_and_mul(x), ref.silu_and_mul(x)
    else:
        approx = op.split("_")[1]
        got, want = tri.gelu_and_mul(x, approx), ref.gelu_and_mul(x, approx)
    assert got.shape == (5, 3, 75)
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("is_neox", "head_dim", "rot_dim", "flat"), [
    (True, 32, 32, False), (False, 32, 32, True), (True, 80, 40, True), (False, 16, 8, False),
])  # fmt: skip
def test_rotary(device, dtype, is_neox, head_dim, rot_dim, flat):
    T, H, Hk = 9, 3, 1
    cache = build_cos_sin_cache(rot_dim, 100, 10000.0, dtype=torch.float32, device=device)
    pos = torch.randint(0, 100, (T,), device=device)
    q = torch.randn(T, H, head_dim, device=device).to(dtype)
    k = torch.randn(T, Hk, head_dim, device=device).to(dtype)
    q1, k1, q2, k2 = q.clone(), k.clone(), q.clone(), k.clone()
    if flat:
        tri.rotary_embedding(pos, q1.view(T, -1), k1.view(T, -1), cache, is_neox, head_dim=head_dim)
    else:
        tri.rotary_embedding(pos, q1, k1, cache, is_neox)
    ref.rotary_embedding(pos, q2, k2, cache, is_neox)
    _close(q1, q2, dtype)
    _close(k1, k2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_cache(device, dtype):
    nb, bs, H, D = 6, 4, 3, 24
    kc = torch.full((nb, bs, H, D), float("nan"), device=device).to(dtype)
    vc = kc.clone()
    kc2, vc2 = kc.clone(), vc.clone()
    k = torch.randn(7, H, D, device=device).to(dtype)
    v = torch.randn(7, H, D, device=device).to(dtype)
    slots = torch.tensor([3, 4, -1, 23, 0, -1, 9], dtype=torch.int32, device=device)
    tri.write_kv_cache(k, v, kc, vc, slots)
    ref.write_kv_cache(k, v, kc2, vc2, slots)
    assert torch.equal(kc.isnan(), kc2.isnan()) and torch.equal(vc.isnan(), vc2.isnan())
    assert torch.equal(kc.nan_to_num(), kc2.nan_to_num()) and torch.equal(
        vc.nan_to_num(), vc2.nan_to_num()
    )
