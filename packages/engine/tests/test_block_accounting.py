"""Block accounting: refcounts always match the block tables, and nothing leaks.

A hypothesis state machine drives a real engine (tiny model, tiny cache so preemption and
swapping happen) through arbitrary interleavings of add (plain and beam search requests) /
step / abort, checking after every operation that each block's refcount equals the number of
live sequences holding it, and at the end that every block is free with refcount zero.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leaflm.engine import BeamSearchParams, SamplingParams
from leaflm.engine.block_manager import BlockManager
from leaflm.engine.config import EngineArgs
from leaflm.engine.engine import LLMEngine
from leaflm.engine.outputs import RequestMetrics
from leaflm.engine.sequence import Request, Sequence, SequenceStatus

BLOCK_BYTES = 2 * 2 * 4 * 2 * 16 * 4  # tiny llama, block_size 4


def check_invariants(engine: LLMEngine) -> None:
    bm = engine.block_manager
    holders: Counter[int] = Counter()
    cpu_held = 0
    for req in engine.requests.values():
        for seq in req.seqs:
            if seq.status is SequenceStatus.SWAPPED:
                cpu_held += len(seq.block_table)
            elif not seq.is_finished:
                assert len(set(seq.block_table)) == len(seq.block_table)
                holders.update(seq.block_table)
            else:
                assert seq.block_table == []
    for block in range(bm.num_blocks):
        assert bm.ref_counts[block] == holders[block], block
        assert (block in bm.free_queue) == (holders[block] == 0)
    assert len(bm.cpu_free) + cpu_held == bm.num_cpu_blocks
    for h, block in bm.cached.items():
        assert bm.block_hash[block] == h


@pytest.fixture(scope="module")
def engines(llama_dir):
    common = {"model": str(llama_dir), "block_size": 4, "max_num_batched_tokens": 24}
    return [
        LLMEngine(EngineArgs(kv_cache_memory=20 * BLOCK_BYTES, **common)),
        LLMEngine(EngineArgs(kv_cache_memory=20 * BLOCK_BYTES, swap_space_gb=0.0001, **common)),
    ]


op = st.one_of(
    st.tuples(
        st.just("add"),
        st.integers(1, 30),  # prompt length
        st.integers(1, 12),  # max_tokens
        st.integers(1, 3),  # n
        st.sampled_from([0.0, 1.0]),
    ),
    st.tuples(
        st.just("beam"),
        st.integers(1, 30),  # prompt length
        st.integers(1, 8),  # max_tokens
        st.integers(1, 3),  # beam width
        st.booleans(),  # ignore_eos
    ),
    st.tuples(st.just("step")),
    st.tuples(st.just("abort"), st.integers(0, 50)),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(op, min_size=1, max_size=40), which=st.integers(0, 1), shared=st.booleans())
def test_any_interleaving_frees_every_block(engines, ops, which, shared):
    engine = engines[which]
    ids = []
    for i, o in enumerate(ops):
        if o[0] == "add":
            _, length, max_tokens, n, temperature = o
            prompt = [5 + (j if shared else (j * 7 + i) % 300) for j in range(length)]
            rid = f"r{i}"
            engine.add_request(
                rid,
                prompt,
                SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, seed=i),
            )
            ids.append(rid)
        elif o[0] == "beam":  # beams fork, share blocks, get freed when outranked
            _, length, max_tokens, width, ignore_eos = o
            prompt = [5 + (j if shared else (j * 11 + i) % 300) for j in range(length)]
            rid = f"b{i}"
            engine.add_request(rid, prompt, BeamSearchParams(width, max_tokens, ignore_eos))
            ids.append(rid)
        elif o[0] == "step":
            engine.step()
        elif ids:
            engine.abort(ids[o[1] % len(ids)])
        check_invariants(engine)
    for _ in range(200):
        if not engine.has_unfinished():
            break
        engine.step()
        check_invariants(engine)
    assert not engine.has_unfinished()
    assert engine.block_manager.all_free()
    assert not any(engine.block_manager.ref_counts)


def _seq(tokens: list[int], seq_id: int = 0) -> Sequence:
    req = Request(str(seq_id), None, tokens, SamplingParams(), RequestMetrics(0.0), frozenset())
    return Sequence(seq_id, req, 0, 0)


def test_copy_on_write_of_shared_partial_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = _seq(list(range(6)))
    assert bm.allocate_slots(parent, 6)
    parent.num_computed_tokens = 6
    child = parent.fork(1, 1, 1)
    bm.fork(parent, child)
    assert bm.ref_counts[parent.block_table[1]] == 2
    parent.token_ids.append(99)
    assert bm.allocate_slots(parent, 1)  # writes into the shared partial block -> copy
    ((src, dst),) = bm.take_pending_copies()
    assert src == child.block_table[1] and dst == parent.block_table[1] and src != dst
    assert parent.block_table[0] == child.block_table[0]  # full block still shared
    child.token_ids.append(98)
    assert bm.allocate_slots(child, 1)  # now the sole owner: no copy
    assert bm.take_pending_copies() == []
    bm.free(parent)
    bm.free(child)
    assert bm.all_free()


def test_prefix_cache_reuses_freed_blocks_in_lru_order():
    bm = BlockManager(num_blocks=6, block_size=4)
    a = _seq(list(range(9)))
    assert bm.allocate_slots(a, 9)
    a.num_computed_tokens = 9
    bm.cache_full_blocks(a)
    first, second = a.block_table[:2]
    bm.free(a)
    b = _seq([*range(8), 50, 51])
    assert bm.find_cached_prefix(b) == [first, second]
    # Filling the pool takes never-used and unhashed blocks first, then evicts the least
    # recently freed cached block: the tail of the prefix (freed before its head).
    c = _seq(list(range(100, 120)))
    assert bm.allocate_slots(c, 20)
    assert second in c.block_table and first not in c.block_table
    assert not bm.allocate_slots(_seq(list(range(200, 208))), 8)  # only `first` is left
    bm.free(c)
    hits = bm.find_cached_prefix(b)
    assert hits == [first]
    assert bm.allocate_slots(b, 6, hits)
    assert b.block_table[0] == first and bm.ref_counts[first] == 1
    bm.free(b)
    assert bm.all_free()
