"""Reference layer ops against independent formulations (HF modules, rope utils)."""

from __future__ import annotations

import pytest
import torch

from leaflm.kernels import build_cos_sin_cache
from leaflm.kernels import reference as ref


def test_rms_norm_with_and_without_residual():
    g = torch.Generator().manual_seed(0)
    x, r, w = (
        torch.randn(5, 64, generator=g),
        torch.randn(5, 64, generator=g),
        torch.randn(64, generator=g),
    )
    h = (x + r).double()
    want = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    out, new_res = ref.rms_norm(x, w, 1e-6, r)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_res, x + r)
    torch.testing.assert_close(ref.rms_norm(x + r, w, 1e-6).double(), want, atol=1e-5, rtol=1e-5)


def _hf_rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("layout", ["3d", "2d"])
def test_rotary_matches_hf_formula(is_neox, layout):
    g = torch.Generator().manual_seed(1)
    T, H, Hk, D, rot = 6, 4, 2, 32, 16  # partial rotary: first 16 of 32 dims
    cache = build_cos_sin_cache(rot, 64, 10000.0)
    pos = torch.tensor([0, 5, 63, 2, 2, 17])
    q, k = torch.randn(T, H, D, generator=g), torch.randn(T, Hk, D, generator=g)
    q2, k2 = q.clone(), k.clone()
    if layout == "2d":
        ref.rotary_embedding(pos, q2.view(T, H * D), k2.view(T, Hk * D), cache, is_neox, head_dim=D)
    else:
        ref.rotary_embedding(pos, q2, k2, cache, is_neox)
    cos, sin = cache[pos, : rot // 2], cache[pos, rot // 2 :]
    for x, y in ((q, q2), (k, k2)):
        xr = x[..., :rot]
        if is_neox:
            c, s = torch.cat((cos, cos), -1)[:, None], torch.cat((sin, sin), -1)[:, None]
            want = xr * c + _hf_rotate_half(xr) * s
        else:  # GPT-J: pairs (2i, 2i+1) rotate by angle i
            c, s = cos.repeat_interleave(2, -1)[:, None], sin.repeat_interleave(2, -1)[:, None]
            rot_pairs = torch.stack((-xr[..., 1::2], xr[..., 0::2]), -1).flatten(-2)
            want = xr * c + rot_pairs * s
        torch.testing.assert_close(y[..., :rot], want, atol=1e-5, rtol=1e-5)
        assert torch.equal(y[..., rot:], x[..., rot:])


@pytest.mark.parametrize(
    "scaling",
    [
        None,
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
        {"rope_type": "dynamic", "factor": 2.0},
    ],
)  # fmt: skip
def test_inv_freq_matches_transformers(scaling):
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import LlamaConfig

    base, head_dim, max_pos = 50000.0, 32, 256
    params = (
        {"rope_type": "default", "rope_theta": base}
        if scaling is None
        else {**scaling, "rope_theta": base}
    )
    cfg = LlamaConfig(
        hidden_size=128, num_attention_heads=4, head_dim=head_dim,
        max_position_embeddings=max_pos, rope_parameters=params,
    )  # fmt: skip
    kind = params["rope_type"]
    if kind == "default":
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        attn = 1.0
    else:
        inv, attn = rope_utils.ROPE_INIT_FUNCTIONS[kind](cfg, "cpu")
    sc = None if scaling is None else dict(scaling, max_position_embeddings=max_pos)
    cache = build_cos_sin_cache(head_dim, max_pos, base, sc)
    t = torch.arange(max_pos).float()
    freqs = t[:, None] * inv.float()[None]
    want = torch.cat((freqs.cos() * attn, freqs.sin() * attn), -1)
    torch.testing.assert_close(cache, want, atol=1e-6, rtol=1e-6)


def test_gated_activations():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 2 * 24, generator=g)
    a, b = x[..., :24].double(), x[..., 24:].double()
    torch.testing.assert_close(
        ref.silu_and_mul(x).double(), a * torch.sigmoid(a) * b, atol=1e-6, rtol=1e-6
    )
    tanh_gelu = 0.5 * a * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (a + 0.044715 * a**3)))
    torch.testing.assert_close(ref.gelu_and_mul(x).double(), tanh_gelu * b, atol=1e-6, rtol=1e-6)
    erf_gelu = 0.5 * a * (1 + torch.erf(a / 2**0.5))
    torch.testing.assert_close(
        ref.gelu_and_mul(x, "none").double(), erf_gelu * b, atol=1e-6, rtol=1e-6
    )
