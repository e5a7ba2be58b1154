"""Activations: GELU-gated MLPs over a merged gate/up projection, and HF's plain ones by name.

(The SiLU-gated MLP's activation lives in `linear.SiluGatedLinear`, fused with its GEMM on CPU.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from leaflm import kernels


class GeluAndMul(nn.Module):
    def __init__(self, approximate: str = "tanh") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.gelu_and_mul(x, self.approximate)


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function HF applies for an `hidden_act` / `activation_function` name."""
    import torch.nn.functional as F

    fns = {
        "gelu": F.gelu,
        "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu": F.relu,
        "silu": F.silu,
        "swish": F.silu,
    }
    if name in fns:
        return fns[name]
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ValueError(f"unsupported activation function {name!r}")
    return ACT2FN[name]
