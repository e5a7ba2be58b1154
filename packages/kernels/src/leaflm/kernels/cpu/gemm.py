"""CPU linear layers through oneDNN with each weight packed once, at load time.

``F.linear`` on CPU calls MKL's sgemm, which re-packs the weight on every call. With a few
dozen rows (a decode batch) that repacking is a large share of the work: oneDNN on weights
pre-packed into its blocked layout ran a SmolLM-135M decode step's 120 GEMMs (64 rows) in
~76 ms against MKL's ~114 ms, one row ~24 ms vs ~33 ms, and a 2048-token prefill ~10%
faster, on the 2-core dev machine. These are the same ops PyTorch's Inductor uses for
frozen CPU linears (``mkldnn::_reorder_linear_weight`` / ``mkldnn::_linear_pointwise``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from leaflm.kernels.cpu import build, hugepages

#: the batch size oneDNN picks the packed layout for (it serves every batch size)
BATCH_HINT = 64


@functools.cache
def packing_available() -> bool:
    """Whether this torch has oneDNN's packed linear and it agrees with F.linear."""
    if build.disabled() or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        w, b, x = (torch.randn(s, generator=g) for s in ((24, 16), (24,), (3, 16)))
        got = packed_linear(x, pack_weight(w), b)
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.allclose(got, F.linear(x, w, b), atol=1e-5, rtol=1e-5))


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A ``[out, in]`` float32 weight in oneDNN's packed layout (an opaque tensor)."""
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), BATCH_HINT)
    hugepages.advise_tensor(packed)  # every decode step streams all weights: spare the TLB
    return packed


def packed_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + b`` for a weight packed by :func:`pack_weight`; ``x`` is ``[..., in]``."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], out.shape[-1])
