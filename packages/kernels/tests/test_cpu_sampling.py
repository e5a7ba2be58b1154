"""The C argmax against torch.argmax (ties, -inf, NaN, strided rows, the parallel size), and
CPU `sample` against the reference on batches mixing greedy and sampled rows."""

from __future__ import annotations

import pytest
import torch

from leaflm.kernels import reference as ref
from leaflm.kernels.cpu import library, unavailable_reason

if library() is None:
    pytest.skip(f"CPU kernels unavailable: {unavailable_reason()}", allow_module_level=True)

from leaflm.kernels.cpu import sampling as cpu


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (3, 17), (5, 1000), (64, 49152)])
def test_argmax_matches_torch(rows, cols):
    x = torch.randn(rows, cols)
    assert torch.equal(cpu.argmax(x), torch.argmax(x, dim=-1))


def test_argmax_edge_values_match_torch():
    x = torch.randn(6, 100)
    x[0, [5, 40, 99]] = 50.0  # ties: the lowest index
    x[1] = -torch.inf  # nothing above -inf: index 0
    x[2, 70] = torch.nan  # a NaN wins, as in torch
    x[3, [3, 90]] = torch.nan  # the first NaN
    x[4, 99] = torch.inf
    x[5, 96:] = 1e30  # the maximum in the scalar tail past the last full vector
    assert torch.equal(cpu.argmax(x), torch.argmax(x, dim=-1))


def test_argmax_of_strided_rows():
    wide = torch.randn(4, 300)
    x = wide[:, 10:250]
    assert torch.equal(cpu.argmax(x), torch.argmax(x, dim=-1))
    cols = torch.randn(50, 4).t()  # unit stride across rows only: copied, same answer
    assert torch.equal(cpu.argmax(cols), torch.argmax(cols, dim=-1))


def test_sample_matches_reference_on_mixed_batches():
    g = torch.Generator().manual_seed(3)
    rows, vocab = 8, 500
    logits = torch.randn(rows, vocab, generator=g) * 3
    temperature = torch.tensor([0.0, 0.7, 0.0, 1.0, 1.3, 0.0, 0.9, 0.0])
    top_k = torch.tensor([0, 20, 0, 0, 5, 0, 0, 0], dtype=torch.int32)
    top_p = torch.tensor([1.0, 0.9, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0])
    min_p = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0])
    seeds = torch.arange(rows, dtype=torch.int64) * 7 + 1
    offsets = torch.arange(rows, dtype=torch.int64)
    args = (temperature, top_k, top_p, min_p, seeds, offsets)
    assert torch.equal(cpu.sample(logits, *args), ref.sample(logits, *args))
    greedy = torch.zeros(rows)
    assert torch.equal(cpu.sample(logits, greedy, *args[1:]), torch.argmax(logits, dim=-1))


def _masked_by_hand(logits, bitmask, rows):
    """The bitmask's definition, one token at a time: bit b of word w allows token 32w + b."""
    out = logits.clone()
    for j, r in enumerate(rows):
        for c in range(logits.shape[1]):
            if not (int(bitmask[j, c // 32]) >> (c % 32)) & 1:
                out[r, c] = float("-inf")
    return out


@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 100, 1000])
def test_apply_token_bitmask_matches_its_definition(vocab):
    gen = torch.Generator().manual_seed(vocab)
    words = -(-vocab // 32) + 1  # a mask may be wider than the vocabulary
    bitmask = torch.randint(-(2**31), 2**31 - 1, (4, words), dtype=torch.int32, generator=gen)
    bitmask[0], bitmask[1] = -1, 0  # all allowed, none allowed
    logits = torch.randn(6, vocab, generator=gen)
    rows = torch.tensor([5, 0, 3, 1])
    expected = _masked_by_hand(logits, bitmask, rows.tolist())
    assert torch.equal(cpu.apply_token_bitmask(logits.clone(), bitmask, rows), expected)
    assert torch.equal(ref.apply_token_bitmask(logits.clone(), bitmask, rows), expected)
    whole = logits[:4].clone()
    assert torch.equal(
        cpu.apply_token_bitmask(whole, bitmask), _masked_by_hand(logits[:4], bitmask, range(4))
    )


def test_apply_token_bitmask_refuses_mismatched_shapes():
    logits = torch.zeros(2, 100)
    with pytest.raises(ValueError, match="int32"):
        cpu.apply_token_bitmask(logits, torch.zeros(2, 3, dtype=torch.int32))  # 96 < 100 bits
    with pytest.raises(ValueError, match="rows"):
        cpu.apply_token_bitmask(logits, torch.zeros(1, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="indices"):
        cpu.apply_token_bitmask(logits, torch.zeros(1, 4, dtype=torch.int32), torch.tensor([2]))
