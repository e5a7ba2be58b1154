"""Dispatch: CPU tensors use the reference (attention: the C kernel when built); the env var
forces a path and rejects junk."""

from __future__ import annotations

import pytest
import torch

import leaflm.kernels as K
from leaflm.kernels import dispatch


def test_cpu_defaults_to_torch(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert K.backend_for(torch.zeros(1)) == "torch"


def test_cpu_float32_prefers_the_c_kernels(monkeypatch):
    from leaflm.kernels.cpu import library

    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    x = torch.zeros(1, 16)
    assert dispatch.use_cpu_kernels(x, None) == (library() is not None)
    assert not dispatch.use_cpu_kernels(x.double())
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert not dispatch.use_cpu_kernels(x)


def test_forced_cpu_kernels_need_float32(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    with pytest.raises(RuntimeError, match=dispatch.ENV_VAR):
        dispatch.use_cpu_kernels(torch.zeros(1, 16).double())


def test_env_forces_and_validates(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert K.backend_for(torch.zeros(1)) == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    assert K.backend_for(torch.zeros(1)) == "torch"  # ops without a C kernel
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        K.backend_for(torch.zeros(1))


def test_forced_triton_without_triton_fails_loudly(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="triton"):
        K.backend_for(torch.zeros(1))


def test_public_ops_run_on_cpu(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    x = torch.randn(4, 16)
    torch.testing.assert_close(K.silu_and_mul(x), torch.nn.functional.silu(x[:, :8]) * x[:, 8:])
    out, res = K.rms_norm(x, torch.ones(16), 1e-6, residual=torch.zeros(4, 16))
    assert out.shape == (4, 16) and torch.equal(res, x)
