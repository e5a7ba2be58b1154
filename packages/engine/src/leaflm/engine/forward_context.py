"""Per-step metadata handed to the model explicitly (no globals): attention layout and caches.

The model runner orders each batch decode-first: the first `num_decode_tokens` rows are
sequences with exactly one new token (batched decode attention), the rest are prefill chunks
(varlen causal attention over each sequence's cached prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Where each new token's KV goes and what context each query attends to."""

    slot_mapping: torch.Tensor  # [T] int64 cache slot of every new token
    num_decode_tokens: int
    decode_block_tables: torch.Tensor  # [num_decode, max_blocks] int32
    decode_seq_lens: torch.Tensor  # [num_decode] int32, context incl. the new token
    num_prefill_tokens: int
    prefill_block_tables: torch.Tensor  # [num_prefill_seqs, max_blocks] int32
    prefill_query_start_loc: torch.Tensor  # [num_prefill_seqs + 1] int32, from 0
    prefill_seq_lens: torch.Tensor  # [num_prefill_seqs] int32
    max_prefill_query_len: int


@dataclass
class ForwardContext:
    """Everything a forward pass needs besides token ids and positions."""

    attn: AttentionMetadata
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (key_cache, value_cache)
