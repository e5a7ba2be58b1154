"""CPU graphs replay exactly the recorded kernel calls, and refuse passes that did other work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leaflm.kernels.cpu import library, unavailable_reason

if library() is None:
    pytest.skip(f"CPU kernels unavailable: {unavailable_reason()}", allow_module_level=True)

from leaflm.kernels.cpu import gemm, graph, layers


def _block(x, w_norm, packed, ids, table):
    h = layers.rms_norm(x, w_norm, 1e-6)
    return gemm.packed_linear(h, packed), layers.embedding(ids, table)


@torch.inference_mode()
def test_replay_follows_inputs_overwritten_in_place():
    g = torch.Generator().manual_seed(0)
    x, w_norm = torch.randn(3, 64, generator=g), torch.rand(64, generator=g)
    weight, table = torch.randn(100, 64, generator=g), torch.randn(50, 8, generator=g)
    packed = gemm.pack_weight(weight)
    ids = torch.tensor([3, 0, 49])
    with graph.capture() as recorded:
        recorded.output = _block(x, w_norm, packed, ids, table)
    assert len(recorded.calls) == 3  # norm, GEMM, gather
    for _ in range(2):
        x.copy_(torch.randn(3, 64, generator=g))
        ids.copy_(torch.randint(0, 50, (3,), generator=g))
        expected = _block(x, w_norm, packed, ids, table)  # eager, fresh outputs
        got = recorded.replay()
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@torch.inference_mode()
def test_other_torch_work_makes_the_capture_unsafe():
    x, w = torch.randn(2, 16), torch.ones(16)
    with pytest.raises(graph.GraphUnsafe, match=r"aten\.add"), graph.capture():
        layers.rms_norm(x + 1.0, w, 1e-6)
    with pytest.raises(graph.GraphUnsafe, match="no kernel calls"), graph.capture():
        x.view(4, 8)
    with graph.capture() as outer:  # views and allocations are fine
        layers.rms_norm(x.view(2, 16)[:, :16], w, 1e-6)
        with pytest.raises(RuntimeError, match="already open"), graph.capture():
            pass
    assert len(outer.calls) == 1


@torch.inference_mode()
def test_a_reshape_that_copies_makes_the_capture_unsafe():
    """Per-head norms on a slice of a fused QKV output (Qwen3's q_norm): merging the rows and
    heads of a strided view copies, and a replay would norm the stale copy."""
    w = torch.ones(8)
    q = torch.randn(2, 48).split([32, 8, 8], dim=-1)[0].reshape(2, 4, 8)  # rows 48 apart
    with pytest.raises(graph.GraphUnsafe, match="reshape"), graph.capture():
        layers.rms_norm(q, w, 1e-6)
    with graph.capture() as one_row:  # one row: the merge is a true view
        layers.rms_norm(q[:1], w, 1e-6)
    assert len(one_row.calls) == 1


def test_embedding_rows_plain_and_packed():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(100, 24, generator=g)
    ids = torch.tensor([[0, 99, 7], [7, 42, 1]])
    assert torch.equal(layers.embedding(ids, table), F.embedding(ids, table))
    if gemm.panel_width():
        packed = gemm.pack_weight(table)
        assert torch.equal(gemm.packed_rows(packed, ids), F.embedding(ids, table))
        with pytest.raises(IndexError, match="outside"):
            gemm.packed_rows(packed, torch.tensor([100]))  # a padding row of the last panel
    with pytest.raises(IndexError, match="1 token id"):
        layers.embedding(torch.tensor([5, -1]), table)


@torch.inference_mode()
def test_a_python_step_rides_in_the_graph():
    x, w = torch.randn(2, 16), torch.ones(16)
    shifted = torch.empty(2, 16)
    with graph.capture() as recorded:
        graph.python_step(lambda: torch.add(x, 1.0, out=shifted))  # torch work, exempt
        recorded.output = layers.rms_norm(shifted, w, 1e-6)
    assert len(recorded.calls) == 2
    x.copy_(torch.randn(2, 16))
    assert torch.equal(recorded.replay(), layers.rms_norm(x + 1.0, w, 1e-6))


@torch.inference_mode()
def test_kernel_calls_inside_a_python_step_are_not_recorded():
    """They write into the step's temporaries, freed when it returns: replaying them would
    write into freed memory (it corrupted the heap of a served default model)."""
    table, ids, w = torch.randn(50, 8), torch.tensor([1, 2]), torch.ones(8)
    out = torch.empty(2, 8)
    with graph.capture() as recorded:
        graph.python_step(lambda: out.copy_(layers.embedding(ids, table)))
        recorded.output = layers.rms_norm(out, w, 1e-6)
    assert len(recorded.calls) == 2  # the step and the norm, not the step's gather
    ids.copy_(torch.tensor([7, 3]))
    expected = layers.rms_norm(F.embedding(ids, table), w, 1e-6)
    assert torch.equal(recorded.replay(), expected)


@torch.inference_mode()
def test_another_threads_kernel_calls_stay_off_the_tape():
    """A server's engine thread captures while other threads call kernels (a reference run,
    a second engine); their calls, on tensors they free, must not be replayed."""
    import threading

    x, w = torch.randn(2, 16), torch.ones(16)
    entered, done = threading.Event(), threading.Event()

    def other() -> None:
        entered.wait()
        layers.rms_norm(torch.randn(4, 16), w, 1e-6)
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with graph.capture() as recorded:
        recorded.output = layers.rms_norm(x, w, 1e-6)
        entered.set()
        done.wait(10)
    t.join()
    assert len(recorded.calls) == 1


@torch.inference_mode()
def test_profile_times_each_kernel_of_the_replays_inside_it():
    x, w = torch.randn(2, 16), torch.ones(16)
    with graph.capture() as recorded:
        recorded.output = layers.rms_norm(layers.rms_norm(x, w, 1e-6), w, 1e-6)
    recorded.replay()  # outside a profile: not counted
    with graph.profile() as prof:
        for _ in range(3):
            recorded.replay()
        with pytest.raises(RuntimeError, match="already open"), graph.profile():
            pass
    recorded.replay()
    assert prof.replays == 3 and prof.calls == {"leaflm_rms_norm": 6}
    ms = prof.per_replay_ms()
    assert list(ms) == ["leaflm_rms_norm"] and ms["leaflm_rms_norm"] > 0
    assert ms["leaflm_rms_norm"] == pytest.approx(prof.seconds["leaflm_rms_norm"] / 3 * 1e3)
