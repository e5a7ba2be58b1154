"""Shared-memory collectives (CPU tensor parallelism on one host) against plain sums: two
ranks, here two threads over one mapped file, many rounds of varied sizes in a row (the
alternating buffers must never let a fast rank overwrite a slot still being read)."""

from __future__ import annotations

import threading
import uuid

import torch

from leaflm.engine.shm_all_reduce import SLOT_FLOATS, ShmCollectives


def test_all_reduce_and_gather_equal_plain_sums(tmp_path):
    path = str(tmp_path / f"tp-{uuid.uuid4().hex}")
    ranks = [ShmCollectives(0, 2, path, create=True), ShmCollectives(1, 2, path, create=False)]
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 576), (1, 7), (3, 5, 11), (2048, 576), (64, 96)] * 20
    inputs = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]
    results: list[list] = [[], []]

    def run(rank: int) -> None:
        comm = ranks[rank]
        for i, x in enumerate(inputs[rank]):
            if i % 3 == 2:
                results[rank].append(comm.gather_to_first(x))
            else:
                results[rank].append(comm.all_reduce(x.clone()))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, (a, b) in enumerate(zip(inputs[0], inputs[1], strict=True)):
        if i % 3 == 2:
            assert results[1][i] is None
            assert torch.equal(results[0][i][0], a) and torch.equal(results[0][i][1], b)
        else:
            assert torch.equal(results[0][i], results[1][i])  # the ranks agree bit for bit
            torch.testing.assert_close(results[0][i], a + b)
    assert ranks[0].fits(torch.zeros(SLOT_FLOATS))
    assert not ranks[0].fits(torch.zeros(SLOT_FLOATS + 1))
    assert not ranks[0].fits(torch.zeros(4, dtype=torch.bfloat16))
    for comm in ranks:
        comm.close()
