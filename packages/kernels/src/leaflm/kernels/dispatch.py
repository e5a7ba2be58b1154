"""Pick the Triton kernel, the C kernel or the PyTorch reference for each call.

CUDA tensors with Triton importable run the Triton kernel. Float32 CPU tensors run the C
kernel (:mod:`leaflm.kernels.cpu`) of ops that have one (paged attention, KV write, RMSNorm,
rotary, SiLU-and-mul, greedy sampling) when it could be built, the paged KV cache float32 or
float16 (``caches=``); anything else runs the reference.
``LEAFLM_KERNELS=torch``, ``=triton`` or ``=cpu`` forces one path (read on every call, so tests
can flip it; ``cpu`` applies to the ops with a C kernel); with ``TRITON_INTERPRET=1`` the forced
Triton path runs on CPU tensors.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

import torch

from leaflm.kernels.cpu import build as cpu_build

ENV_VAR = "LEAFLM_KERNELS"
CPU_CACHE_DTYPES = (torch.float32, torch.float16)  # the KV cache kinds the C kernel reads


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


def _forced() -> str:
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced not in ("", "torch", "triton", "cpu"):
        raise ValueError(f"{ENV_VAR} must be 'torch', 'triton' or 'cpu', got {forced!r}")
    return forced


def backend_for(t: torch.Tensor) -> str:
    """``"triton"`` or ``"torch"`` for an op whose main input is ``t``."""
    return _backend(_forced(), t)


def _backend(forced: str, t: torch.Tensor) -> str:
    if forced in ("torch", "cpu"):
        return "torch"
    if forced == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but triton cannot be imported")
        return "triton"
    return "triton" if t.is_cuda and triton_available() else "torch"


def kernel_module(
    op_kind: str, *tensors: torch.Tensor | None, caches: tuple[torch.Tensor, ...] = ()
) -> ModuleType:
    """The module that runs an op of ``op_kind`` on these tensors (the first is the main one)
    and these paged KV ``caches`` (which the C kernel also reads as float16).

    ``op_kind`` names the op's C-kernel module (``leaflm.kernels.cpu.<op_kind>``), or is ""
    for ops without one.
    """
    main = tensors[0]
    assert main is not None
    forced = _forced()  # one environment read per call: this runs ~200 times a decode step
    if _backend(forced, main) == "triton":
        return triton_ops()
    if op_kind and _cpu_kernels_apply(forced, tensors, caches):
        return _cpu_module(op_kind)
    return _reference()


def _all_cpu_float32(
    tensors: tuple[torch.Tensor | None, ...], caches: tuple[torch.Tensor, ...] = ()
) -> bool:
    return all(t is None or (t.is_cpu and t.dtype == torch.float32) for t in tensors) and all(
        c.is_cpu and c.dtype in CPU_CACHE_DTYPES for c in caches
    )


@functools.cache
def _cpu_module(op_kind: str) -> ModuleType:
    return importlib.import_module(f"leaflm.kernels.cpu.{op_kind}")


@functools.cache
def _reference() -> ModuleType:
    return importlib.import_module("leaflm.kernels.reference")


def use_cpu_kernels(*tensors: torch.Tensor | None, caches: tuple[torch.Tensor, ...] = ()) -> bool:
    """Whether an op with a C kernel runs it: float32 CPU tensors (float32 or float16 KV
    ``caches``) and a built library.

    ``LEAFLM_KERNELS=torch`` (or ``=triton``) says no; ``=cpu`` says yes or raises.
    """
    return _cpu_kernels_apply(_forced(), tensors, caches)


def _cpu_kernels_apply(
    forced: str, tensors: tuple[torch.Tensor | None, ...], caches: tuple[torch.Tensor, ...] = ()
) -> bool:
    if forced in ("torch", "triton"):
        return False
    ok = _all_cpu_float32(tensors, caches)
    reason = cpu_reason()
    if forced == "cpu" and not (ok and reason is None):
        raise RuntimeError(
            f"{ENV_VAR}=cpu needs float32 CPU tensors and a built C kernel "
            f"({reason or 'tensors are not float32 on CPU'})"
        )
    return ok and reason is None


def cpu_reason() -> str | None:
    """Why the C kernels are unavailable (None when they are)."""
    return None if cpu_build.library() is not None else cpu_build.unavailable_reason()


@functools.cache
def triton_ops() -> ModuleType:
    """The Triton kernel package, imported on first use."""
    return importlib.import_module("leaflm.kernels.triton")
