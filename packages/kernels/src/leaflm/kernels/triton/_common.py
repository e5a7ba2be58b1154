"""Helpers shared by the Triton kernels."""

from __future__ import annotations

import os

import triton
import triton.language as tl


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels then upcast before ``tl.dot``: the interpreter
    computes bf16 dots wrongly, having no numpy bf16)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pow2(n: int, minimum: int = 1) -> int:
    """Next power of two >= max(n, minimum) (Triton block shapes must be powers of two)."""
    return max(minimum, triton.next_power_of_2(max(1, int(n))))


@triton.jit
def tanh(x):
    """tanh via exp (exists in every Triton version; saturates correctly at +-inf)."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
