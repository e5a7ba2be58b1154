"""BlockManager: the paged KV cache's block pool, prefix cache, copy-on-write and swap.

Device blocks carry a reference count. Blocks whose count drops to zero go to the back of a
free queue that doubles as the LRU eviction order: a free block may still hold a full, hashed
block of tokens, and a later request with the same prefix takes it back from the queue
(prefix-cache hit) instead of recomputing it; allocating pops the front, evicting the least
recently freed block. Hashes chain (parent hash, block tokens), so a hit implies the whole
prefix matches. Forked sequences share blocks; the first write into a shared partial block
copies it (copy-on-write). Swapping moves a sequence's blocks to a CPU pool and back.

Copies and swaps are only recorded here (`pending_copies`, return values); the model runner
performs them on the cache tensors before the step's forward pass.
"""

from __future__ import annotations

from collections import OrderedDict

from leaflm.engine.sequence import Sequence, SequenceStatus


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    """Owns block ids and reference counts; never touches tensors."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        num_cpu_blocks: int = 0,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> device block id
        self.num_cpu_blocks = num_cpu_blocks
        self.cpu_free: list[int] = list(range(num_cpu_blocks - 1, -1, -1))
        self.pending_copies: list[tuple[int, int]] = []  # (src, dst) for copy-on-write
        self.queried_tokens = 0
        self.hit_tokens = 0

    # -- pool primitives -------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def _pop_free(self) -> int:
        block, _ = self.free_queue.popitem(last=False)
        h = self.block_hash[block]
        if h is not None:  # evict from the prefix cache
            if self.cached.get(h) == block:
                del self.cached[h]
            self.block_hash[block] = None
        self.ref_counts[block] = 1
        return block

    def _touch(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free_queue[block]
        self.ref_counts[block] += 1

    def _release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free_queue[block] = None

    # -- prefix cache ------------------------------------------------------------------------
    def _hashes(self, seq: Sequence, num_tokens: int) -> list[int]:
        """Hash chain of the full blocks among the first `num_tokens` tokens of `seq`."""
        bs = self.block_size
        hashes = seq.block_hashes
        tokens = seq.token_ids
        for i in range(len(hashes), num_tokens // bs):
            parent = hashes[-1] if hashes else None
            hashes.append(hash((parent, *tokens[i * bs : (i + 1) * bs])))
        return hashes

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks matching the longest prefix of `seq` (always leaving one token to compute)."""
        if not self.enable_prefix_caching:
            return []
        limit = (seq.num_tokens - 1) // self.block_size
        blocks = []
        for h in self._hashes(seq, seq.num_tokens - 1)[:limit]:
            block = self.cached.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def record_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        self.queried_tokens += num_tokens
        self.hit_tokens += num_hit_tokens

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Offer `seq`'s newly completed, computed blocks to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        if seq.num_registered_blocks >= num_full:
            return
        hashes = self._hashes(seq, seq.num_computed_tokens)
        for i in range(seq.num_registered_blocks, num_full):
            block, h = seq.block_table[i], hashes[i]
            if self.block_hash[block] is None and h not in self.cached:
                self.block_hash[block] = h
                self.cached[h] = block
        seq.num_registered_blocks = num_full

    # -- allocation --------------------------------------------------------------------------
    def allocate_slots(
        self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] | None = None
    ) -> bool:
        """Make room for `num_new_tokens` more KV entries of `seq`; False if blocks run out.

        `cached_blocks` (prefix-cache hits from `find_cached_prefix`, for a sequence with no
        blocks yet) become the head of its block table. A shared partial block about to be
        written is copied first (copy-on-write).
        """
        bs = self.block_size
        cached_blocks = cached_blocks or []
        num_computed = len(cached_blocks) * bs if cached_blocks else seq.num_computed_tokens
        table = seq.block_table
        num_needed = cdiv(num_computed + num_new_tokens, bs) - len(table) - len(cached_blocks)
        idx = num_computed // bs
        cow = idx < len(table) and self.ref_counts[table[idx]] > 1
        reclaimed = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)
        if max(num_needed, 0) + cow > self.num_free_blocks - reclaimed:
            return False
        for block in cached_blocks:
            self._touch(block)
        table.extend(cached_blocks)
        if cow:
            src, dst = table[idx], self._pop_free()
            self.pending_copies.append((src, dst))
            self._release(src)
            table[idx] = dst
        for _ in range(num_needed):
            table.append(self._pop_free())
        return True

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Let `child` share all of `parent`'s blocks."""
        child.block_table = list(parent.block_table)
        for block in child.block_table:
            self.ref_counts[block] += 1

    def free(self, seq: Sequence) -> None:
        """Return every block `seq` holds (device or, when swapped, CPU)."""
        if seq.status is SequenceStatus.SWAPPED:
            self.cpu_free.extend(seq.block_table)
        else:
            for block in reversed(seq.block_table):  # tail first: evicted before the prefix
                self._release(block)
        seq.block_table = []
        seq.num_registered_blocks = 0

    def take_pending_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies

    # -- swap --------------------------------------------------------------------------------
    def swap_out(self, seq: Sequence) -> list[tuple[int, int]] | None:
        """Move `seq`'s blocks to the CPU pool; returns (device, cpu) pairs, None if it is full."""
        if len(self.cpu_free) < len(seq.block_table):
            return None
        mapping = [(block, self.cpu_free.pop()) for block in seq.block_table]
        for block in reversed(seq.block_table):
            self._release(block)
        seq.block_table = [cpu for _, cpu in mapping]
        seq.num_registered_blocks = 0
        return mapping

    def can_swap_in(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = cdiv(seq.num_computed_tokens + num_new_tokens, self.block_size)
        return needed <= self.num_free_blocks

    def swap_in(self, seq: Sequence) -> list[tuple[int, int]]:
        """Bring `seq`'s blocks back onto the device; returns (cpu, device) pairs."""
        mapping = [(cpu, self._pop_free()) for cpu in seq.block_table]
        self.cpu_free.extend(cpu for cpu, _ in mapping)
        seq.block_table = [dev for _, dev in mapping]
        return mapping

    # -- checks ------------------------------------------------------------------------------
    def all_free(self) -> bool:
        """True when no block is referenced (used by tests and the leak check)."""
        return (
            self.num_free_blocks == self.num_blocks
            and not any(self.ref_counts)
            and len(self.cpu_free) == self.num_cpu_blocks
        )
