"""Reference layer ops: RMSNorm(+residual), rotary embedding, gated activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim in float32, cast back to ``x.dtype``.

    With ``residual``: ``new_residual = x + residual`` and the norm is of ``new_residual``;
    returns ``(out, new_residual)`` (the pre-norm residual stream of LLaMA-style blocks).
    """
    if residual is not None:
        h = x.float() + residual.float()
        new_residual = h.to(x.dtype)
    else:
        h = x.float()
    out = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = (out * weight.float()).to(x.dtype)
    return out if residual is None else (out, new_residual)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """Rotate ``x`` ``[T, H, rot_dim]`` (float32) by per-token ``cos``/``sin`` ``[T, 1, rot_dim/2]``."""
    if is_neox:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    *,
    head_dim: int | None = None,
) -> None:
    """Apply RoPE in place to ``query``/``key`` (``[T, H*D]`` or ``[T, H, D]``).

    ``cos_sin_cache`` ``[max_pos, rot_dim]`` is ``cat(cos, sin)`` (vLLM layout); only the first
    ``rot_dim`` dims of each head rotate (partial rotary). ``is_neox`` rotates halves (HF
    ``rotate_half``); otherwise interleaved pairs (GPT-J). 2-D inputs need ``head_dim`` unless
    it equals ``rot_dim``.
    """
    rot_dim = cos_sin_cache.shape[-1]
    cs = cos_sin_cache[positions.long()].float()
    cos, sin = cs[:, None, : rot_dim // 2], cs[:, None, rot_dim // 2 :]
    for t in (query, key):
        if t is None:
            continue
        d = t.shape[-1] if t.dim() == 3 else (head_dim or rot_dim)
        v = t.view(t.shape[0], -1, d)
        v[..., :rot_dim] = _rotate(v[..., :rot_dim].float(), cos, sin, is_neox).to(t.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` for ``x`` ``[..., 2d]``."""
    d = x.shape[-1] // 2
    return (F.silu(x[..., :d].float()) * x[..., d:].float()).to(x.dtype)


def gelu_and_mul(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """``gelu(x[..., :d], approximate) * x[..., d:]`` (``approximate``: "tanh" or "none")."""
    d = x.shape[-1] // 2
    return (F.gelu(x[..., :d].float(), approximate=approximate) * x[..., d:].float()).to(x.dtype)
