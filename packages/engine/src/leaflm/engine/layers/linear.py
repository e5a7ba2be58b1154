"""Linear layers, including merged ones (QKV, gate/up) filled shard by shard at load time.

Merging the projections that read the same input turns three (or two) matmuls into one,
which matters on CPU where each GEMM call has fixed overhead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """`y = x W^T + b`, with the weight stored as HF stores it (`[out, in]`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """Several projections of one input stacked along the output dim (e.g. q, k and v)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False) -> None:
        super().__init__(in_features, sum(output_sizes), bias)
        self.output_sizes = output_sizes
        self.offsets = [sum(output_sizes[:i]) for i in range(len(output_sizes))]

    def load_shard(self, param: nn.Parameter, shard: int, tensor: torch.Tensor) -> None:
        """Copy one projection's weight or bias into its rows of the merged parameter."""
        start, size = self.offsets[shard], self.output_sizes[shard]
        if tensor.shape[0] != size or tensor.shape[1:] != param.shape[1:]:
            raise ValueError(
                f"shard {shard} has shape {tuple(tensor.shape)}, expected "
                f"{(size, *param.shape[1:])}"
            )
        param.data[start : start + size].copy_(tensor)
