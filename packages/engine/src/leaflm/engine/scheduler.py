"""Scheduler: continuous batching where computed tokens catch up with known tokens (vLLM V1).

There are no prefill and decode phases. Every sequence has `num_computed_tokens`; a step gives
each sequence up to `num_tokens - num_computed_tokens` tokens within the token budget
(`max_num_batched_tokens`) and the sequence cap (`max_num_seqs`), so chunked prefill, decode
and prefix-cache hits are one mechanism. Running sequences go first (oldest first), then
swapped ones, then waiting ones in arrival order. When blocks run out the newest running
sequence is preempted: swapped to CPU when swap space is set and has room, else freed and
recomputed later. Preempted sequences keep their age, so nothing is lost or starved.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from leaflm.engine.block_manager import BlockManager
from leaflm.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    """What to run this step: sequences with their token counts, and cache moves to do first."""

    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)  # (device, cpu)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)  # (cpu, device)
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)  # (src, dst)
    num_preempted: int = 0

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)

    @property
    def empty(self) -> bool:
        return not self.seqs


class Scheduler:
    """Decides each step's batch; owns the waiting, running and swapped queues."""

    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        use_swap: bool = False,
    ) -> None:
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.use_swap = use_swap
        # All three lists stay sorted by Sequence.priority (oldest first).
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.swapped: list[Sequence] = []
        self.num_preemptions = 0
        self.num_swap_outs = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.priority)

    def add_running(self, seq: Sequence) -> None:
        """Insert an already-running sequence (a fork child) in priority order."""
        bisect.insort(self.running, seq, key=lambda s: s.priority)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # -- the step ----------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.bm.allocate_slots(seq, n):
                victim = self.running.pop()  # the newest running sequence
                self._preempt(victim, out)
                if victim is seq:
                    break
            else:
                out.seqs.append(seq)
                out.num_tokens.append(n)
                budget -= n
                i += 1

        if out.num_preempted == 0:
            while self.swapped and budget > 0 and len(self.running) < self.max_num_seqs:
                seq = self.swapped[0]
                n = min(seq.num_tokens - seq.num_computed_tokens, budget)
                if not self.bm.can_swap_in(seq, n):
                    break
                self.swapped.pop(0)
                out.blocks_to_swap_in += self.bm.swap_in(seq)
                seq.status = SequenceStatus.RUNNING
                allocated = self.bm.allocate_slots(seq, n)
                assert allocated, "can_swap_in guaranteed room"
                self.add_running(seq)
                out.seqs.append(seq)
                out.num_tokens.append(n)
                budget -= n

        if out.num_preempted == 0 and not self.swapped:
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                seq = self.waiting[0]
                cached: list[int] = []
                if not seq.request.needs_prompt_logprobs:
                    cached = self.bm.find_cached_prefix(seq)
                num_hit = len(cached) * self.bm.block_size
                n = min(seq.num_tokens - num_hit, budget)
                if not self.bm.allocate_slots(seq, n, cached):
                    break
                self.bm.record_lookup(seq.num_tokens, num_hit)
                self.waiting.pop(0)
                seq.num_computed_tokens = num_hit
                seq.status = SequenceStatus.RUNNING
                self.add_running(seq)
                out.seqs.append(seq)
                out.num_tokens.append(n)
                budget -= n

        out.blocks_to_copy = self.bm.take_pending_copies()
        return out

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        out.num_preempted += 1
        self.num_preemptions += 1
        if self.use_swap:
            mapping = self.bm.swap_out(seq)
            if mapping is not None:
                out.blocks_to_swap_out += mapping
                self.num_swap_outs += 1
                seq.status = SequenceStatus.SWAPPED
                bisect.insort(self.swapped, seq, key=lambda s: s.priority)
                return
        self.bm.free(seq)
        seq.num_computed_tokens = 0
        self.add(seq)

    # -- after the step ----------------------------------------------------------------------
    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence from its queue and free its blocks."""
        for queue in (self.running, self.waiting, self.swapped):
            if seq in queue:
                queue.remove(seq)
                break
        self.bm.free(seq)
        seq.status = SequenceStatus.FINISHED
