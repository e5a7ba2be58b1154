"""Workloads: exact lengths, seeded repeatability, shared chat prefixes, arrival statistics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from transformers import AutoTokenizer

from leaflm.bench.workload import arrival_times, chat_workload, random_workload, sample_lengths
from leaflm.engine.testing import train_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(train_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def test_fixed_lengths_hold_and_prompts_have_no_special_tokens(tokenizer):
    reqs = random_workload(tokenizer, 20, input_len=40, output_len=7, seed=3)
    special = set(tokenizer.all_special_ids)
    assert [r.output_len for r in reqs] == [7] * 20
    for r in reqs:
        assert not special & set(r.prompt_token_ids)
        # the text sent to HTTP servers is exactly the ids offline backends get
        assert tokenizer.encode(r.prompt, add_special_tokens=False) == r.prompt_token_ids
    # this tiny tokenizer's merges can shift a length by a token or two; most are exact
    lens = [r.prompt_len for r in reqs]
    assert all(38 <= n <= 42 for n in lens) and lens.count(40) >= 8


def test_ranged_lengths_stay_in_range_and_vary(tokenizer):
    lens = sample_lengths(20, 0.5, 400, np.random.default_rng(0))
    assert min(lens) == 10 and max(lens) == 30  # uniform over [20*(1-0.5), 20*(1+0.5)]
    assert np.mean(lens) == pytest.approx(20, abs=1)
    reqs = random_workload(tokenizer, 50, input_len=20, output_len=10, range_ratio=0.5, seed=1)
    ins, outs = [r.prompt_len for r in reqs], [r.output_len for r in reqs]
    assert min(ins) >= 8 and max(ins) <= 32 and len(set(ins)) > 5  # ±2: tiny-tokenizer merges
    assert min(outs) >= 5 and max(outs) <= 15 and len(set(outs)) > 3


def test_same_seed_same_workload_other_seed_differs(tokenizer):
    a = random_workload(tokenizer, 4, 16, 4, seed=7)
    b = random_workload(tokenizer, 4, 16, 4, seed=7)
    c = random_workload(tokenizer, 4, 16, 4, seed=8)
    assert [r.prompt_token_ids for r in a] == [r.prompt_token_ids for r in b]
    assert [r.prompt_token_ids for r in a] != [r.prompt_token_ids for r in c]


def test_chat_workload_shares_system_prompt_prefixes(tokenizer):
    reqs = chat_workload(tokenizer, 8, num_system_prompts=2, system_prompt_len=40, question_len=8)
    assert all(r.messages and r.messages[0]["role"] == "system" for r in reqs)
    same = [r for r in reqs if r.extra["system_prompt"] == 0]
    assert len(same) == 4
    ids = [r.prompt_token_ids for r in same]
    shared = 0
    while all(len(x) > shared and x[shared] == ids[0][shared] for x in ids):
        shared += 1
    assert shared >= 40  # the whole system prompt is a common prefix: prefix-cache material
    assert len({tuple(x) for x in ids}) == 4  # yet every request is different
    text = tokenizer.apply_chat_template(
        same[0].messages, add_generation_prompt=True, tokenize=False
    )
    assert same[0].prompt == text
    assert same[0].prompt_token_ids == tokenizer.encode(text, add_special_tokens=False)


def test_poisson_arrivals_have_the_right_rate_and_shape():
    times = arrival_times(4000, request_rate=5.0, burstiness=1.0, seed=0)
    gaps = np.diff([0.0, *times])
    assert all(b >= a for a, b in itertools.pairwise(times))
    assert gaps.mean() == pytest.approx(0.2, rel=0.05)
    # exponential gaps: coefficient of variation 1, and a KS test does not reject
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.06)
    assert stats.kstest(gaps, "expon", args=(0, 0.2)).pvalue > 0.01


def test_gamma_burstiness_keeps_rate_and_changes_variance():
    gaps = np.diff([0.0, *arrival_times(4000, request_rate=5.0, burstiness=0.25, seed=1)])
    assert gaps.mean() == pytest.approx(0.2, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(0.25), rel=0.1)


def test_infinite_rate_sends_everything_at_once_and_bad_input_is_named():
    assert arrival_times(3) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="request_rate"):
        arrival_times(3, request_rate=0)
    with pytest.raises(ValueError, match="range_ratio"):
        sample_lengths(10, 1.5, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_requests"):
        random_workload(None, 0)
