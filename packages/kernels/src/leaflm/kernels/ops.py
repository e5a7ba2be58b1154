"""Public ops: each forwards to a Triton kernel, a C kernel or the PyTorch reference (see dispatch).

Signatures and semantics are those of :mod:`leaflm.kernels.reference`, the specification.
"""

from __future__ import annotations

import torch

from leaflm.kernels import reference as ref
from leaflm.kernels.dispatch import kernel_module


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    impl = kernel_module("attention", key, value, caches=(key_cache, value_cache))
    impl.write_kv_cache(key, value, key_cache, value_cache, slot_mapping)


def paged_attention_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    impl = kernel_module("attention", query, caches=(key_cache, value_cache))
    return impl.paged_attention_decode(
        query, key_cache, value_cache, block_tables, seq_lens, scale,
        alibi_slopes=alibi_slopes, sliding_window=sliding_window, softcap=softcap, out=out,
    )  # fmt: skip


def paged_attention_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    out: torch.Tensor | None = None,
    max_query_len: int | None = None,
) -> torch.Tensor:
    impl = kernel_module("attention", query, caches=(key_cache, value_cache))
    return impl.paged_attention_prefill(
        query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale,
        alibi_slopes=alibi_slopes, sliding_window=sliding_window, softcap=softcap, out=out,
        max_query_len=max_query_len,
    )  # fmt: skip


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
) -> torch.Tensor:
    impl = kernel_module("sampling", logits)
    return impl.sample(logits, temperature, top_k, top_p, min_p, seeds, offsets)


def apply_token_bitmask(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    # No Triton kernel: on CUDA the engine applies xgrammar's own; the reference runs anywhere.
    impl = ref if logits.is_cuda else kernel_module("sampling", logits)
    return impl.apply_token_bitmask(logits, bitmask, rows)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    impl = kernel_module("layers", x, weight, residual)
    return impl.rms_norm(x, weight, eps, residual)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    *,
    head_dim: int | None = None,
) -> None:
    impl = kernel_module("layers", query, key, cos_sin_cache)
    impl.rotary_embedding(positions, query, key, cos_sin_cache, is_neox, head_dim=head_dim)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    impl = kernel_module("layers", x)
    return impl.silu_and_mul(x)


def gelu_and_mul(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    impl = kernel_module("", x)
    return impl.gelu_and_mul(x, approximate)


# Torch on every device: these are a few elementwise/reduction passes that PyTorch already
# runs at bandwidth, so a kernel would buy nothing.
apply_penalties = ref.apply_penalties
compute_logprobs = ref.compute_logprobs
