"""Kernel tests run the Triton kernels on CPU through the interpreter unless a GPU is present.

TRITON_INTERPRET must be set before any ``@triton.jit`` runs, hence here, at collection.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    """Where the Triton kernels run: the CPU interpreter (CI) or a CUDA GPU (``-m gpu``)."""
    pytest.importorskip("triton")
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if request.param == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    return request.param
