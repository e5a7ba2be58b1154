"""Gated activations of LLaMA-style MLPs, over a merged gate/up projection."""

from __future__ import annotations

import torch
from torch import nn

from leaflm import kernels


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.silu_and_mul(x)


class GeluAndMul(nn.Module):
    def __init__(self, approximate: str = "tanh") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.gelu_and_mul(x, self.approximate)
