"""`compare_runners(..., score_from=k)` scores only positions >= k of each window (the
positions `llama-perplexity` scores when k is half the window), checked against the KL and
argmax agreement computed by hand from each window's logits of two tiny random models."""

from __future__ import annotations

import pytest
import torch

from leaflm.engine.quant_eval import compare_runners, load_runner, prompt_logits, windows
from leaflm.engine.testing import build_tiny_model


@pytest.fixture(scope="module")
def runners(tmp_path_factory):
    ref_dir = build_tiny_model(tmp_path_factory.mktemp("ref"), seed=0)
    cand_dir = build_tiny_model(tmp_path_factory.mktemp("cand"), seed=1)
    return load_runner(ref_dir)[0], load_runner(cand_dir)[0]


def test_only_the_second_half_of_each_window_is_scored(runners):
    reference, candidate = runners
    ids = [int(t) for t in torch.randint(3, 300, (70,), generator=torch.Generator().manual_seed(0))]
    window, first = 32, 16  # windows of 32, 32 and a 6-token tail that holds no scored position
    kls, agree = [], []
    for chunk in windows(ids, window):
        ref = torch.log_softmax(prompt_logits(reference, chunk), -1)[first:-1]
        cand = torch.log_softmax(prompt_logits(candidate, chunk), -1)[first:-1]
        kls.append((ref.exp() * (ref - cand)).sum(-1))
        agree.append(ref.argmax(-1) == cand.argmax(-1))
    kl, same = torch.cat(kls), torch.cat(agree)
    result = compare_runners(reference, candidate, ids, window, score_from=first)
    assert result.positions == 2 * (window - 1 - first) == len(kl)
    assert result.mean_kl == pytest.approx(float(kl.mean()), rel=1e-5)
    assert result.max_kl == pytest.approx(float(kl.max()), rel=1e-5)
    assert result.top1_agreement == pytest.approx(float(same.float().mean()))
    assert result.mean_kl > 0  # two different random models
    full = compare_runners(reference, candidate, ids, window)
    assert full.positions == len(ids) - 3  # every position of every window


def test_a_score_from_outside_the_window_is_refused(runners):
    reference, candidate = runners
    with pytest.raises(ValueError, match="score_from"):
        compare_runners(reference, candidate, list(range(3, 40)), 16, score_from=15)
