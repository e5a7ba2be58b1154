"""Exact float32 logits near the top of each row of an approximate (int8) LM head.

See ``rescore.c``: every logit within ``margin`` of its row's maximum is recomputed as
``x @ w[j] + bias[j]`` from the float weight, in place; the rest keep the approximate values.
:func:`rescore_near_max_reference` defines the result in PyTorch and serves where the C
kernels do not (a GPU tensor, no compiler).
"""

from __future__ import annotations

import torch

from leaflm.kernels.cpu import build


def rescore_near_max_reference(
    logits: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    margin: float,
) -> torch.Tensor:
    """The definition, in place on ``[rows, vocab]`` ``logits`` (also returned)."""
    near = logits >= logits.max(dim=-1, keepdim=True).values - margin
    rows, cols = near.nonzero(as_tuple=True)
    exact = (x[rows] * weight[cols]).sum(dim=-1)
    if bias is not None:
        exact = exact + bias[cols]
    logits[rows, cols] = exact.to(logits.dtype)
    return logits


def rescore_near_max(
    logits: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    margin: float,
) -> torch.Tensor:
    """``logits`` ``[rows, vocab]`` of ``x`` ``[rows, dim]`` against an approximation of
    ``weight`` ``[vocab, dim]`` (and ``bias``), made exact in place within ``margin`` of each
    row's maximum; returned."""
    if logits.dim() != 2 or x.shape != (logits.shape[0], weight.shape[1]):
        raise ValueError(
            f"rescoring takes [rows, vocab] logits, [rows, dim] inputs and a [vocab, dim] "
            f"weight, got {tuple(logits.shape)}, {tuple(x.shape)}, {tuple(weight.shape)}"
        )
    if weight.shape[0] != logits.shape[1]:
        raise ValueError(f"{weight.shape[0]} weight rows for {logits.shape[1]} logits a row")
    lib = build.library()
    usable = (
        lib is not None
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (logits, x, weight))
        and logits.stride(-1) == 1
        and x.stride(-1) == 1
        and weight.is_contiguous()
        and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
    )
    if not usable:
        return rescore_near_max_reference(logits, x, weight, bias, margin)
    if logits.numel():
        lib.leaflm_rescore_near_max(
            x.data_ptr(), x.stride(0), weight.data_ptr(),
            None if bias is None else bias.data_ptr(), logits.data_ptr(), logits.stride(0),
            logits.shape[0], logits.shape[1], weight.shape[1], margin, torch.get_num_threads(),
        )  # fmt: skip
    return logits
