"""ModelRunner: loads the model and runs one flat, unpadded token batch per step.

A step's sequences are laid out decode-first: every sequence with one new token, then each
prefill chunk. From the scheduler's output it builds input_ids, positions, slot_mapping (the
cache slot of each new token), block tables and context lengths, runs the model, and takes
logits only at the rows the engine asks for (normally each sequence's last token).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from leaflm.engine.config import ModelConfig
from leaflm.engine.forward_context import AttentionMetadata, ForwardContext
from leaflm.engine.kv_cache import KVCache
from leaflm.engine.layers.linear import pack_for_cpu
from leaflm.engine.loader import load_weights
from leaflm.engine.models.registry import resolve_model_class
from leaflm.engine.scheduler import SchedulerOutput
from leaflm.kernels.cpu import gemm, malloc_tuning

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, model_config: ModelConfig) -> None:
        self.config = model_config
        self.device = model_config.device
        cls = resolve_model_class(model_config.hf_config)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(model_config.dtype)
        try:
            with torch.device(self.device):
                self.model = cls(model_config.hf_config)
        finally:
            torch.set_default_dtype(previous)
        start = time.perf_counter()
        dtype = str(model_config.dtype).replace("torch.", "")
        logger.info("loading weights (%s) onto %s", dtype, self.device)
        load_weights(self.model, model_config.path)
        self.model.eval()
        if self.device.type == "cpu":
            logger.info(
                "weights loaded in %.1f s; packing them for the CPU GEMM",
                time.perf_counter() - start,
            )
            start = time.perf_counter()
            packed = pack_for_cpu(self.model)
            logger.info(
                "packed %d linear weights (%s) in %.1f s", packed, gemm.linear_backend(),
                time.perf_counter() - start,
            )  # fmt: skip
            malloc_tuning.release_free_heap()  # the freed plain weights' holes
            malloc_tuning.retain_freed_memory()  # activations are re-allocated every layer
        self.kv: KVCache | None = None
        self.block_size = 16

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def kv_shape(self) -> tuple[int, int, int]:
        """(num_layers, num_kv_heads, head_dim) of the model's cache."""
        return self.model.num_layers, self.model.num_kv_heads, self.model.head_dim

    def init_kv_cache(self, num_blocks: int, block_size: int, num_cpu_blocks: int) -> None:
        layers, kv_heads, head_dim = self.kv_shape()
        self.block_size = block_size
        self.kv = KVCache(
            layers, num_blocks, block_size, kv_heads, head_dim,
            self.config.dtype, self.device, num_cpu_blocks,
        )  # fmt: skip

    @torch.inference_mode()
    def profile_peak_memory(self, num_tokens: int, block_size: int) -> int:
        """Peak CUDA bytes of a forward over `num_tokens` tokens (for KV-cache sizing)."""
        num_blocks = -(-num_tokens // block_size)
        self.init_kv_cache(num_blocks, block_size, 0)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        dev, i32 = self.device, torch.int32
        meta = AttentionMetadata(
            slot_mapping=torch.arange(num_tokens, device=dev),
            num_decode_tokens=0,
            decode_block_tables=torch.zeros(0, 1, dtype=i32, device=dev),
            decode_seq_lens=torch.zeros(0, dtype=i32, device=dev),
            num_prefill_tokens=num_tokens,
            prefill_block_tables=torch.arange(num_blocks, dtype=i32, device=dev)[None],
            prefill_query_start_loc=torch.tensor([0, num_tokens], dtype=i32, device=dev),
            prefill_seq_lens=torch.tensor([num_tokens], dtype=i32, device=dev),
            max_prefill_query_len=num_tokens,
        )
        ids = torch.zeros(num_tokens, dtype=torch.long, device=dev)
        assert self.kv is not None  # init_kv_cache above
        hidden = self.model(
            ids, torch.arange(num_tokens, device=dev), ForwardContext(meta, self.kv.layers)
        )
        self.model.compute_logits(hidden[-1:])
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(self.device)
        self.kv = None
        torch.cuda.empty_cache()
        return peak

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput, logit_rows: list[tuple[int, int]]) -> torch.Tensor:
        """Run the step; return logits `[len(logit_rows), V]` (float32).

        `logit_rows` are (index into sched.seqs, offset within that sequence's new tokens).
        """
        assert self.kv is not None, "init_kv_cache first"
        self.kv.apply(sched.blocks_to_swap_out, sched.blocks_to_swap_in, sched.blocks_to_copy)
        input_ids, positions, meta, row_start = self._prepare(sched)
        hidden = self.model(input_ids, positions, ForwardContext(meta, self.kv.layers))
        rows = [row_start[i] + off for i, off in logit_rows]
        return self.model.compute_logits(take_rows(hidden, rows)).float()

    def _prepare(
        self, sched: SchedulerOutput
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        bs = self.block_size
        seqs, counts = sched.seqs, sched.num_tokens
        row_start = [0] * len(seqs)
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        dec_tables, dec_lens = [], []
        for i, (s, n) in enumerate(zip(seqs, counts, strict=True)):
            if n != 1:
                continue
            p = s.num_computed_tokens
            row_start[i] = len(ids)
            ids.append(s.token_ids[p])
            pos.append(p)
            slots.append(s.block_table[p // bs] * bs + p % bs)
            dec_tables.append(s.block_table)
            dec_lens.append(p + 1)
        num_decode = len(ids)
        pf_tables, pf_lens, qsl = [], [], [0]
        max_q = 0
        for i, (s, n) in enumerate(zip(seqs, counts, strict=True)):
            if n == 1:
                continue
            start, end = s.num_computed_tokens, s.num_computed_tokens + n
            row_start[i] = len(ids)
            ids.extend(s.token_ids[start:end])
            r = np.arange(start, end)
            table = np.asarray(s.block_table, dtype=np.int64)
            pos.extend(r.tolist())
            slots.extend((table[r // bs] * bs + r % bs).tolist())
            pf_tables.append(s.block_table)
            pf_lens.append(end)
            qsl.append(qsl[-1] + n)
            max_q = max(max_q, n)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            num_decode_tokens=num_decode,
            decode_block_tables=_pad(dec_tables, dev),
            decode_seq_lens=torch.tensor(dec_lens, dtype=torch.int32, device=dev),
            num_prefill_tokens=len(ids) - num_decode,
            prefill_block_tables=_pad(pf_tables, dev),
            prefill_query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
            prefill_seq_lens=torch.tensor(pf_lens, dtype=torch.int32, device=dev),
            max_prefill_query_len=max_q,
        )
        input_ids = torch.tensor(ids, dtype=torch.long, device=dev)
        positions = torch.tensor(pos, dtype=torch.long, device=dev)
        return input_ids, positions, meta, row_start


def take_rows(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``t[rows]``, without a copy when ``rows`` are all of ``t``'s rows in order."""
    if rows == list(range(t.shape[0])):
        return t
    return t.index_select(0, torch.tensor(rows, dtype=torch.long, device=t.device))


def _pad(tables: list[list[int]], device: torch.device) -> torch.Tensor:
    """Block tables as one int32 `[S, max_blocks]` tensor (padding points at block 0)."""
    width = max((len(t) for t in tables), default=1) or 1
    arr = np.zeros((len(tables), width), dtype=np.int32)
    for j, t in enumerate(tables):
        arr[j, : len(t)] = t
    return torch.from_numpy(arr).to(device)
