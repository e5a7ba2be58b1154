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
from leaflm.engine.cpu_graphs import DecodeGraphs
from leaflm.engine.forward_context import AttentionMetadata, ForwardContext
from leaflm.engine.kv_cache import KVCache
from leaflm.engine.layers.linear import pack_for_cpu
from leaflm.engine.loader import load_weights
from leaflm.engine.models.registry import resolve_model_class
from leaflm.engine.scheduler import SchedulerOutput
from leaflm.engine.step_input import StepInput, build_step_input
from leaflm.kernels.cpu import gemm, hugepages, int8_gemm, malloc_tuning

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
        except ValueError as exc:  # e.g. a size the tensor-parallel ranks cannot split
            if cls.__name__ in str(exc):
                raise
            raise ValueError(f"{cls.__name__}: {exc}") from exc
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
            quant = model_config.quantization
            if quant == "gguf":
                _attach_gguf_blocks(self.model, model_config)
            with hugepages.weight_arena():  # all packed weights on huge pages
                packed = pack_for_cpu(self.model, quant)
            logger.info(
                "packed %d linear weights (%s) in %.1f s", packed,
                _packed_as(quant), time.perf_counter() - start,
            )  # fmt: skip
            malloc_tuning.release_free_heap()  # the freed plain weights' holes
            malloc_tuning.retain_freed_memory()  # activations are re-allocated every layer
        self.kv: KVCache | None = None
        self.graphs: DecodeGraphs | None = None
        self.block_size = 16

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def kv_shape(self) -> tuple[int, int, int]:
        """(num_layers, num_kv_heads, head_dim) of the model's cache."""
        return self.model.num_layers, self.model.num_kv_heads, self.model.head_dim

    def init_kv_cache(
        self, num_blocks: int, block_size: int, num_cpu_blocks: int, num_prefault_blocks: int = 0
    ) -> None:
        layers, kv_heads, head_dim = self.kv_shape()
        self.block_size = block_size
        self.kv = KVCache(
            layers, num_blocks, block_size, kv_heads, head_dim,
            self.config.cache_dtype, self.device, num_cpu_blocks, num_prefault_blocks,
        )  # fmt: skip
        self.graphs = None
        if self.device.type == "cpu":  # small decode steps replay recorded kernel calls
            max_blocks = -(-self.config.max_model_len // block_size)
            self.graphs = DecodeGraphs(self.model, self.kv.layers, max_blocks)

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
        return self.execute_step(build_step_input(sched, logit_rows, self.block_size))

    @torch.inference_mode()
    def execute_step(self, step: StepInput) -> torch.Tensor:
        """Run a laid-out step; logits at `step.logit_rows` (`[rows, 0]` on TP ranks > 0)."""
        assert self.kv is not None, "init_kv_cache first"
        self.kv.apply(step.blocks_to_swap_out, step.blocks_to_swap_in, step.blocks_to_copy)
        # A replayed CPU graph reads the step from its own input tensors: no metadata to build.
        hidden = self.graphs.forward(step) if self.graphs is not None else None
        if hidden is None:
            hidden = self._eager_forward(step)
        return self.model.compute_logits(take_rows(hidden, step.logit_rows)).float()

    def _eager_forward(self, step: StepInput) -> torch.Tensor:
        assert self.kv is not None
        dev = self.device

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(dev)

        meta = AttentionMetadata(
            slot_mapping=t(step.slot_mapping),
            num_decode_tokens=step.num_decode_tokens,
            decode_block_tables=t(step.decode_block_tables),
            decode_seq_lens=t(step.decode_seq_lens),
            num_prefill_tokens=len(step.input_ids) - step.num_decode_tokens,
            prefill_block_tables=t(step.prefill_block_tables),
            prefill_query_start_loc=t(step.prefill_query_start_loc),
            prefill_seq_lens=t(step.prefill_seq_lens),
            max_prefill_query_len=step.max_prefill_query_len,
        )
        ctx = ForwardContext(meta, self.kv.layers)
        return self.model(t(step.input_ids), t(step.positions), ctx)


def take_rows(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``t[rows]``, without a copy when ``rows`` are all of ``t``'s rows in order."""
    if rows == list(range(t.shape[0])):
        return t
    return t.index_select(0, torch.tensor(rows, dtype=torch.long, device=t.device))


def _packed_as(quant: str | None) -> str:
    """The path the packed linears run on, for the load log: int8 names its tile's ISA."""
    if quant is None:
        return gemm.linear_backend()
    if quant.startswith("int8"):
        return f"{quant}, {int8_gemm.simd()}"
    return quant


def _attach_gguf_blocks(model: torch.nn.Module, config: ModelConfig) -> None:
    """Hand each linear layer its GGUF blocks; without the C kernels, keep float weights."""
    from leaflm.engine.gguf.blocks import attach_gguf_blocks
    from leaflm.kernels.cpu import gguf_gemm

    if not gguf_gemm.available():
        logger.warning(
            "quantization='gguf': the CPU kernels are not available (%s); running the "
            "dequantized float32 weights instead", gguf_gemm.unavailable_reason(),
        )  # fmt: skip
        return
    assert config.gguf_path is not None  # checked by load_model_config
    attached = attach_gguf_blocks(model, config.gguf_path, config.hf_config)
    logger.info(
        "quantization='gguf': %d linear layers on %s blocks (%s)", attached,
        config.gguf_path.name, gguf_gemm.simd(),
    )  # fmt: skip
