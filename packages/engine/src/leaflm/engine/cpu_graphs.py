"""Small decode steps replayed from CPU graphs instead of run through Python.

At small batches a CPU decode step is a few hundred kernel calls on tiny activations, and
the Python around them (modules, dispatch, checks, allocations, ctypes conversions) is a
large share of the step: ~5 ms of ~19 ms at batch 1 for SmolLM2-135M on the 2-core dev VM,
where the GEMVs are bound by memory bandwidth. So a pure-decode step is run eagerly the
first time its padded size (CAPTURE_SIZES: 1, 2, 4, ... 64, as vLLM's CUDA graph sizes) is
seen, while `leaflm.kernels.cpu.graph` records its kernel calls into input tensors this
class owns; later steps of that size copy their token ids, positions, slots, block tables
and context lengths into those tensors and replay the calls. Padding rows write no cache
slot (slot -1) and see no keys (context 0); their hidden states are dropped.

The capture is checked twice: the recorder refuses a pass that ran any torch op other than
views and allocations (the model then always runs eagerly, logged once), and right after
capture the graph is replayed on the same inputs and must reproduce the eager output
bit for bit. Prefill and mixed steps, tensor parallelism (collectives are not kernel calls),
and anything but float32 CPU models always run eagerly. ``LEAFLM_CPU_GRAPHS=0`` turns
graphs off.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from leaflm.engine.forward_context import AttentionMetadata, ForwardContext
from leaflm.engine.parallel_state import tp_size
from leaflm.engine.step_input import StepInput
from leaflm.kernels.cpu import graph
from leaflm.kernels.dispatch import use_cpu_kernels

logger = logging.getLogger(__name__)

GRAPHS_VAR = "LEAFLM_CPU_GRAPHS"
# Up to 64 sequences: at the offline benchmark's 64, eager Python was ~1.1 s of a 16.8 s run.
CAPTURE_SIZES = (1, 2, 4, 8, 16, 32, 64)
MAX_GRAPH_BATCH = CAPTURE_SIZES[-1]


def graphs_enabled() -> bool:
    return os.environ.get(GRAPHS_VAR, "1").strip() != "0"


class _StepGraph:
    """One batch size's captured forward and the input tensors its calls read."""

    def __init__(self, batch: int, max_blocks: int) -> None:
        i32, i64 = torch.int32, torch.int64
        self.input_ids = torch.zeros(batch, dtype=i64)
        self.positions = torch.zeros(batch, dtype=i64)
        self.slots = torch.zeros(batch, dtype=i64)
        self.block_tables = torch.zeros(batch, max_blocks, dtype=i32)
        self.seq_lens = torch.ones(batch, dtype=i32)
        self.graph: graph.CpuGraph | None = None

    def load(self, step: StepInput) -> None:
        """The step's rows first, then padding rows that touch nothing."""
        n, width = step.decode_block_tables.shape
        self.input_ids.numpy()[:n] = step.input_ids
        self.positions.numpy()[:n] = step.positions
        self.slots.numpy()[:n] = step.slot_mapping
        self.block_tables.numpy()[:n, :width] = step.decode_block_tables
        self.seq_lens.numpy()[:n] = step.decode_seq_lens
        self.input_ids.numpy()[n:] = 0
        self.positions.numpy()[n:] = 0
        self.slots.numpy()[n:] = -1
        self.seq_lens.numpy()[n:] = 0

    def context(self, kv_layers: list[tuple[torch.Tensor, torch.Tensor]]) -> ForwardContext:
        i32 = torch.int32
        meta = AttentionMetadata(
            slot_mapping=self.slots,
            num_decode_tokens=len(self.slots),
            decode_block_tables=self.block_tables,
            decode_seq_lens=self.seq_lens,
            num_prefill_tokens=0,
            prefill_block_tables=torch.zeros(0, 1, dtype=i32),
            prefill_query_start_loc=torch.zeros(1, dtype=i32),
            prefill_seq_lens=torch.zeros(0, dtype=i32),
            max_prefill_query_len=0,
        )
        return ForwardContext(meta, kv_layers)


class DecodeGraphs:
    """Captures and replays the model's forward for decode steps of up to MAX_GRAPH_BATCH."""

    def __init__(
        self, model: nn.Module, kv_layers: list[tuple[torch.Tensor, torch.Tensor]], max_blocks: int
    ) -> None:
        self.model = model
        self.kv_layers = kv_layers
        self.max_blocks = max_blocks
        self.steps: dict[int, _StepGraph] = {}
        self.disabled: str | None = None
        params = [p for p in model.parameters() if p is not None]
        if not graphs_enabled():
            self.disabled = f"{GRAPHS_VAR}=0"
        elif tp_size() > 1:
            self.disabled = "tensor parallelism (collectives are not kernel calls)"
        elif not use_cpu_kernels(*params[:1], caches=tuple(kv_layers[0]) if kv_layers else ()):
            self.disabled = "not a float32 CPU model with the C kernels"

    def forward(self, step: StepInput) -> torch.Tensor | None:
        """The step's hidden states from its graph, or None where it must run eagerly."""
        batch = len(step.input_ids)
        if (
            self.disabled is not None
            or batch > MAX_GRAPH_BATCH
            or step.num_decode_tokens != batch
            or step.decode_block_tables.shape[1] > self.max_blocks
        ):
            return None
        size = next(s for s in CAPTURE_SIZES if s >= batch)
        state = self.steps.get(size)
        if state is None:
            state = self.steps[size] = _StepGraph(size, self.max_blocks)
            state.load(step)
            hidden = self._capture(state)
        else:
            state.load(step)
            assert state.graph is not None
            hidden = state.graph.replay()
        return None if hidden is None else hidden[:batch]

    def _capture(self, state: _StepGraph) -> torch.Tensor | None:
        ctx = state.context(self.kv_layers)
        try:
            with graph.capture() as g:
                g.output = self.model(state.input_ids, state.positions, ctx)
        except graph.GraphUnsafe as exc:
            self._give_up(f"the forward cannot be recorded: {exc}")
            return None
        eager = g.output.clone()
        # Replaying rewrites this step's cache slots with the same values.
        if not torch.equal(g.replay(), eager):
            self._give_up("a replay did not reproduce the eager forward")
            return None
        state.graph = g
        logger.debug("captured a CPU graph for decode batch %d: %d calls", len(state.slots),
                     len(g.calls))  # fmt: skip
        return g.output

    def _give_up(self, why: str) -> None:
        self.disabled = why
        self.steps.clear()
        logger.info("decode steps run eagerly: %s", why)
        return None
