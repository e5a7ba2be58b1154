"""Pick the Triton kernel or the PyTorch reference for each call.

CUDA tensors with Triton importable run the Triton kernel; anything else runs the reference.
``LEAFLM_KERNELS=torch`` or ``=triton`` forces one path (read on every call, so tests can flip
it); with ``TRITON_INTERPRET=1`` the forced Triton path runs on CPU tensors.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

import torch

ENV_VAR = "LEAFLM_KERNELS"


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (never imports it eagerly elsewhere)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        importlib.import_module("triton")
    except Exception:  # a broken install must not break the CPU path
        return False
    return True


def backend_for(t: torch.Tensor) -> str:
    """``"triton"`` or ``"torch"`` for an op whose main input is ``t``."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced == "torch":
        return "torch"
    if forced == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but triton cannot be imported")
        return "triton"
    if forced:
        raise ValueError(f"{ENV_VAR} must be 'torch' or 'triton', got {forced!r}")
    return "triton" if t.is_cuda and triton_available() else "torch"


@functools.cache
def triton_ops() -> ModuleType:
    """The Triton kernel package, imported on first use."""
    return importlib.import_module("leaflm.kernels.triton")
