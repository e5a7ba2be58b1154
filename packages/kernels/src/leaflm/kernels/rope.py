"""RoPE cos/sin caches whose inverse frequencies match HF ``ROPE_INIT_FUNCTIONS``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def _default_inv_freq(rot_dim: int, base: float, device: torch.device | None) -> torch.Tensor:
    exps = torch.arange(0, rot_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
    return 1.0 / (base ** (exps / rot_dim))


def _llama3(inv_freq: torch.Tensor, s: Mapping[str, Any]) -> torch.Tensor:
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / lo, old_len / hi
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(
    rot_dim: int, base: float, s: Mapping[str, Any], max_pos: int, device: torch.device | None
) -> tuple[torch.Tensor, float]:
    factor = s.get("factor") or max_pos / s["original_max_position_embeddings"]
    orig = s["original_max_position_embeddings"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = s.get("attention_factor")
    if attn is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attn = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def corr_dim(rot: float) -> float:
        return (rot_dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(rot_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extra = 1 - ramp.to(device)
    pos_freqs = base ** (torch.arange(0, rot_dim, 2).to(device=device, dtype=torch.float) / rot_dim)
    inv = (1.0 / (factor * pos_freqs)) * (1 - extra) + (1.0 / pos_freqs) * extra
    return inv, float(attn)


def rope_inv_freq(
    rot_dim: int,
    base: float,
    scaling: Mapping[str, Any] | None = None,
    max_pos: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, float]:
    """``(inv_freq [rot_dim/2], attention_factor)`` as HF computes them for ``scaling``.

    ``scaling`` is an HF ``rope_scaling``/``rope_parameters`` dict (``rope_type`` or ``type``:
    default, linear, dynamic, llama3, yarn). ``dynamic`` is evaluated at ``max_pos`` (a static
    cache), with ``scaling["max_position_embeddings"]`` the model's trained length.
    """
    dev = torch.device(device) if device is not None else None
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind == "default":
        return _default_inv_freq(rot_dim, base, dev), 1.0
    assert scaling is not None
    if kind == "linear":
        return _default_inv_freq(rot_dim, base, dev) / scaling["factor"], 1.0
    if kind == "llama3":
        return _llama3(_default_inv_freq(rot_dim, base, dev), scaling), 1.0
    if kind == "dynamic":
        trained = scaling.get("max_position_embeddings") or max_pos
        assert trained is not None, "dynamic RoPE needs max_pos or max_position_embeddings"
        seq_len = max(max_pos or trained, trained)
        f = scaling["factor"]
        new_base = base * ((f * seq_len / trained) - (f - 1)) ** (rot_dim / (rot_dim - 2))
        return _default_inv_freq(rot_dim, new_base, dev), 1.0
    if kind == "yarn":
        return _yarn(rot_dim, base, scaling, max_pos or 0, dev)
    raise ValueError(f"rope scaling type {kind!r} is not supported")


def build_cos_sin_cache(
    rot_dim: int,
    max_pos: int,
    base: float,
    scaling: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[max_pos, rot_dim]`` = ``cat(cos, sin)`` of ``position * inv_freq`` (float32 math, as HF).

    YaRN's attention factor multiplies cos and sin, as HF does.
    """
    inv_freq, attn = rope_inv_freq(rot_dim, base, scaling, max_pos, device)
    t = torch.arange(max_pos, device=inv_freq.device, dtype=torch.float32)
    freqs = t[:, None] * inv_freq.float()[None, :]
    cache = torch.cat((freqs.cos() * attn, freqs.sin() * attn), dim=-1)
    return cache.to(dtype)
