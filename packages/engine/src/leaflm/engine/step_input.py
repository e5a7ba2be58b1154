"""One step's model input as plain arrays: what every tensor-parallel rank needs, nothing more.

The driver builds it from the scheduler's output (sequences, their new-token counts, the block
moves); a worker turns it into tensors on its device. It holds no `Sequence` objects, so the
message an executor sends to its workers each step is small (token ids and block tables of
this step only) and pickles once for all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leaflm.engine.scheduler import SchedulerOutput


@dataclass
class StepInput:
    """Flat, decode-first token batch; `logit_rows` index its rows (see `ModelRunner`)."""

    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64
    num_decode_tokens: int
    decode_block_tables: np.ndarray  # [num_decode, max_blocks] int32
    decode_seq_lens: np.ndarray  # [num_decode] int32
    prefill_block_tables: np.ndarray  # [num_prefill_seqs, max_blocks] int32
    prefill_query_start_loc: np.ndarray  # [num_prefill_seqs + 1] int32
    prefill_seq_lens: np.ndarray  # [num_prefill_seqs] int32
    max_prefill_query_len: int
    logit_rows: list[int]
    blocks_to_swap_out: list[tuple[int, int]]
    blocks_to_swap_in: list[tuple[int, int]]
    blocks_to_copy: list[tuple[int, int]]


def build_step_input(
    sched: SchedulerOutput, logit_rows: list[tuple[int, int]], block_size: int
) -> StepInput:
    """Lay out the step; `logit_rows` are (index into sched.seqs, offset in its new tokens)."""
    bs = block_size
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
    return StepInput(
        input_ids=np.asarray(ids, dtype=np.int64),
        positions=np.asarray(pos, dtype=np.int64),
        slot_mapping=np.asarray(slots, dtype=np.int64),
        num_decode_tokens=num_decode,
        decode_block_tables=_pad(dec_tables),
        decode_seq_lens=np.asarray(dec_lens, dtype=np.int32),
        prefill_block_tables=_pad(pf_tables),
        prefill_query_start_loc=np.asarray(qsl, dtype=np.int32),
        prefill_seq_lens=np.asarray(pf_lens, dtype=np.int32),
        max_prefill_query_len=max_q,
        logit_rows=[row_start[i] + off for i, off in logit_rows],
        blocks_to_swap_out=sched.blocks_to_swap_out,
        blocks_to_swap_in=sched.blocks_to_swap_in,
        blocks_to_copy=sched.blocks_to_copy,
    )


def _pad(tables: list[list[int]]) -> np.ndarray:
    """Block tables as one int32 `[S, max_blocks]` array (padding points at block 0)."""
    width = max((len(t) for t in tables), default=1) or 1
    arr = np.zeros((len(tables), width), dtype=np.int32)
    for j, t in enumerate(tables):
        arr[j, : len(t)] = t
    return arr
