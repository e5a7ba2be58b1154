"""HF baselines produce exactly the requested tokens, and match each other greedily."""

from __future__ import annotations

import psutil
import pytest
from transformers import AutoTokenizer

from leaflm.bench.baselines import (
    cb_cache_blocks,
    run_hf_generate_batch,
    run_hf_single,
    run_hf_static,
)
from leaflm.bench.offline import run_throughput, speedups
from leaflm.bench.workload import BenchRequest, random_workload
from leaflm.engine.testing import build_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model_dir = build_tiny_model(tmp_path_factory.mktemp("m") / "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    return model_dir, random_workload(tok, 5, input_len=12, output_len=6, range_ratio=0.5, seed=2)


def test_each_baseline_counts_exactly_the_requested_tokens(setup):
    model_dir, reqs = setup
    want = sum(r.output_len for r in reqs)
    for result in (run_hf_single(reqs, model_dir), run_hf_static(reqs, model_dir, batch_size=2)):
        assert result.output_tokens == want, result.backend
        assert result.num_requests == 5 and result.elapsed_s > 0 and result.peak_memory_mb > 50


def test_generate_batch_ignores_eos_and_runs_outside_inference_mode(setup):
    # one output length: generate_batch pays a fixed start-up cost per call on CPU
    model_dir, reqs = setup
    fixed = [BenchRequest(r.prompt, r.prompt_token_ids, 6) for r in reqs[:3]]
    # a cache of 3 blocks of 256 tokens and 64-token batches: without them generate_batch
    # takes 90% of free RAM for its cache (>10 GB here)
    before_mb = psutil.Process().memory_info().rss / 2**20
    result = run_hf_generate_batch(fixed, model_dir, num_blocks=3, max_batch_tokens=64)
    assert result.output_tokens == 18 and result.note == "generate_batch"
    assert result.peak_memory_mb - before_mb < 1024, (before_mb, result.peak_memory_mb)


def test_generate_batch_cache_holds_the_workload_on_cpu(setup):
    _, reqs = setup
    assert cb_cache_blocks(reqs, page_size=256) == len(reqs)  # each request fits one block
    long = BenchRequest("x", list(range(300)), 10)
    assert cb_cache_blocks([long, *reqs[:2]], page_size=256) == 2 + 2
    with pytest.raises(ValueError, match="num_blocks must be a positive integer"):
        run_hf_generate_batch(reqs, "unused", num_blocks=0)


def test_failures_are_recorded_and_other_backends_still_run(setup, monkeypatch):
    from leaflm.bench import offline

    model_dir, reqs = setup

    def broken(*args, **kwargs):
        raise RuntimeError("planted")

    monkeypatch.setattr(offline, "run_hf_generate_batch", broken)
    failures: list[str] = []
    results = run_throughput(reqs, model_dir, ["hf-cb", "hf-single"], failures=failures,
                             subsets={"hf-single": 2}, log=lambda _m: None)  # fmt: skip
    assert [r.backend for r in results] == ["hf-single"] and results[0].num_requests == 2
    assert "first 2 of 5 requests" in results[0].note
    assert failures == ["hf-cb: RuntimeError('planted')"]
    with pytest.raises(RuntimeError, match="planted"):
        run_throughput(reqs, model_dir, ["hf-cb"], log=lambda _m: None)
    with pytest.raises(ValueError, match="unknown backend"):
        run_throughput(reqs, model_dir, ["vllm"])
    assert speedups(results) == {}  # no leaflm result, no ratios


def test_repeats_interleave_the_backends_and_report_each_ones_median_round(setup, monkeypatch):
    from leaflm.bench import offline
    from leaflm.bench.metrics import OfflineResult

    model_dir, reqs = setup
    seconds = {"leaflm": iter([2.0, 1.0, 4.0]), "hf-static": iter([8.0, 10.0, 9.0])}
    calls = []

    def planted(name, chosen, *args):
        calls.append(name)
        return OfflineResult(name, len(chosen), 60, 100, next(seconds[name]), 1.0)

    monkeypatch.setattr(offline, "_run_one", planted)
    results = run_throughput(reqs, model_dir, ["leaflm", "hf-static"], repeats=3,
                             log=lambda _m: None)  # fmt: skip
    assert calls == ["leaflm", "hf-static"] * 3
    by_name = {r.backend: r for r in results}
    assert by_name["leaflm"].elapsed_s == 2.0 and by_name["hf-static"].elapsed_s == 9.0
    assert by_name["leaflm"].trials == [50.0, 100.0, 25.0]
    assert "median of 3 rounds (50.0, 100.0, 25.0 tok/s)" in by_name["leaflm"].note
    assert speedups(results)["hf-static"] == pytest.approx(9.0 / 2.0)
    assert OfflineResult.from_dict(by_name["leaflm"].to_dict()).trials == [50.0, 100.0, 25.0]
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        run_throughput(reqs, model_dir, ["leaflm"], repeats=0)
