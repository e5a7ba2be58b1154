"""The fused C layer ops (float32 CPU) vs the reference: RMSNorm with and without the residual
add, rotary embedding (NeoX halves, GPT-J pairs, partial rotary, strided views of a fused QKV),
SiLU-and-mul over large magnitudes; small inputs (one thread) and large ones (OpenMP)."""

from __future__ import annotations

import pytest
import torch

from leaflm.kernels import build_cos_sin_cache
from leaflm.kernels import reference as ref
from leaflm.kernels.cpu import library, unavailable_reason

if library() is None:
    pytest.skip(f"CPU kernels unavailable: {unavailable_reason()}", allow_module_level=True)

from leaflm.kernels.cpu import layers as cpu

TOL = {"atol": 1e-5, "rtol": 1e-5}
ROWS = [1, 7, 600]  # 600 x 576 crosses the kernels' parallel threshold


@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm(rows):
    x, w = torch.randn(rows, 576), torch.randn(576)
    torch.testing.assert_close(cpu.rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6), **TOL)


@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm_with_residual_leaves_inputs_alone(rows):
    wide = torch.randn(rows, 2 * 576)
    x = wide[:, :576]  # strided rows, like a slice of a fused projection
    res, w = torch.randn(rows, 576), torch.randn(576)
    x_before, res_before = x.clone(), res.clone()
    out, new_res = cpu.rms_norm(x, w, 1e-5, residual=res)
    want_out, want_res = ref.rms_norm(x, w, 1e-5, residual=res)
    torch.testing.assert_close(out, want_out, **TOL)
    torch.testing.assert_close(new_res, want_res, **TOL)
    assert torch.equal(x, x_before) and torch.equal(res, res_before)


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize(("tokens", "rot_dim"), [(5, 64), (700, 64), (9, 32)])
def test_rotary_on_fused_qkv_views(is_neox, tokens, rot_dim):
    heads, kv, d = 9, 3, 64
    cache = build_cos_sin_cache(rot_dim, 2048, 10000.0, None)
    pos = torch.randint(0, 2048, (tokens,))
    qkv = torch.randn(tokens, (heads + 2 * kv) * d)
    q, k = qkv[:, : heads * d], qkv[:, heads * d : (heads + kv) * d]
    want_q, want_k = q.clone(), k.clone()
    ref.rotary_embedding(pos, want_q, want_k, cache, is_neox, head_dim=d)
    untouched = qkv[:, (heads + kv) * d :].clone()
    cpu.rotary_embedding(pos, q, k, cache, is_neox, head_dim=d)
    torch.testing.assert_close(q, want_q, **TOL)
    torch.testing.assert_close(k, want_k, **TOL)
    assert torch.equal(qkv[:, (heads + kv) * d :], untouched)


def test_rotary_three_dim_query_without_key():
    cache = build_cos_sin_cache(16, 64, 500.0, None)
    pos = torch.arange(4)
    q = torch.randn(4, 2, 16)
    want = q.clone()
    ref.rotary_embedding(pos, want, None, cache, True)
    cpu.rotary_embedding(pos, q, None, cache, True)
    torch.testing.assert_close(q, want, **TOL)


@pytest.mark.parametrize("rows", ROWS)
def test_silu_and_mul(rows):
    x = torch.randn(rows, 2 * 1536) * 30  # exp saturates both ways
    x[0, :4] = torch.tensor([-200.0, 200.0, 0.0, -0.0])
    torch.testing.assert_close(cpu.silu_and_mul(x), ref.silu_and_mul(x), **TOL)
    strided = x[:, :-2][:, : 2 * 1000]
    torch.testing.assert_close(cpu.silu_and_mul(strided), ref.silu_and_mul(strided), **TOL)
