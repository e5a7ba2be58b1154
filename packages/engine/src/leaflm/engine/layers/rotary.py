"""Rotary position embedding applied from a precomputed cos/sin cache.

The base and scaling come from `rope_settings` (both HF config generations, no guessed base).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leaflm import kernels


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
