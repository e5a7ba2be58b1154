"""Rotary position embedding, configured from an HF config (old and transformers-5 styles).

transformers 5 keeps `rope_theta` and the scaling dict together in `config.rope_parameters`;
older configs have `rope_theta` and `rope_scaling` as separate attributes. Both are read here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leaflm import kernels


def rope_config(hf_config: Any) -> tuple[float, dict[str, Any] | None]:
    """`(base, scaling)` from an HF config; scaling is None for plain RoPE."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or params or None
    base = params.get("rope_theta") or getattr(hf_config, "rope_theta", None) or 10000.0
    if scaling is not None:
        kind = scaling.get("rope_type") or scaling.get("type") or "default"
        if kind == "default":
            scaling = None
        else:
            scaling = dict(scaling)
            scaling.setdefault(
                "max_position_embeddings", getattr(hf_config, "max_position_embeddings", None)
            )
    return float(base), scaling


class RotaryEmbedding(nn.Module):
    """Applies RoPE in place to flat `[T, H*D]` queries and keys, from a precomputed cache."""

    def __init__(
        self,
        head_dim: int,
        rot_dim: int,
        max_position: int,
        base: float,
        scaling: dict[str, Any] | None = None,
        is_neox: bool = True,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.is_neox = is_neox
        cache = kernels.build_cos_sin_cache(rot_dim, max_position, base, scaling)
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> None:
        kernels.rotary_embedding(
            positions, query, key, self.cos_sin_cache, self.is_neox, head_dim=self.head_dim
        )
