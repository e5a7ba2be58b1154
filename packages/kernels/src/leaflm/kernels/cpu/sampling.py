"""Sampling on float32 CPU logits: greedy rows through the C argmax, grammar masks in one
pass (see ``sampling.c``).

Signatures and semantics are those of :mod:`leaflm.kernels.reference.sampling`. Rows that
sample go through the reference on their own: a row's draw depends only on its logits,
parameters, seed and offset, so taking the rows apart changes nothing.
"""

from __future__ import annotations

import torch

from leaflm.kernels.cpu.build import require_library
from leaflm.kernels.reference import sampling as ref


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(logits, dim=-1)`` for ``[B, V]`` logits (lowest index on ties, NaN wins)."""
    rows, cols = logits.shape
    if rows == 0 or cols == 0:
        return torch.argmax(logits, dim=-1)  # torch's own answer (or error) for empty shapes
    x = logits if logits.stride(-1) == 1 else logits.contiguous()
    out = torch.empty(rows, dtype=torch.long)
    require_library().leaflm_argmax_rows(
        x.data_ptr(), x.stride(0), rows, cols, out.data_ptr(), torch.get_num_threads()
    )
    return out


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
) -> torch.Tensor:
    out = argmax(logits)
    sampled = temperature >= ref.GREEDY_EPS
    if bool(sampled.any()):
        rows = sampled.nonzero().squeeze(1)
        out[rows] = ref.sample(
            logits[rows], temperature[rows], top_k[rows], top_p[rows], min_p[rows],
            seeds[rows], offsets[rows],
        )  # fmt: skip
    return out


def apply_token_bitmask(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    n, vocab = bitmask.shape[0], logits.shape[1]
    rows = ref.bitmask_rows(logits, bitmask, rows)
    if logits.stride(-1) != 1:
        return ref.apply_token_bitmask(logits, bitmask, rows)
    mask = bitmask.contiguous()
    if n:
        require_library().leaflm_apply_token_bitmask(
            logits.data_ptr(), logits.stride(0), mask.data_ptr(), mask.shape[1],
            rows.data_ptr(), n, vocab, torch.get_num_threads(),
        )  # fmt: skip
    return logits
