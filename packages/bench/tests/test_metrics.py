"""Metric math against hand-computed references."""

from __future__ import annotations

import math

import pytest

from leaflm.bench.metrics import OfflineResult, RequestRecord, meets_slo, parse_slo, summarize


def _rec(start, ttft, gaps, end_pad=0.0, tokens=None, success=True):
    end = start + ttft + sum(gaps) + end_pad
    return RequestRecord(start=start, end=end, success=success, prompt_tokens=10,
                         output_tokens=tokens if tokens is not None else len(gaps) + 1,
                         ttft=ttft, itl=list(gaps))  # fmt: skip


def test_per_request_tpot_and_e2e():
    r = _rec(1.0, 0.5, [0.1, 0.2, 0.3])
    assert r.e2e == pytest.approx(1.1)
    assert r.tpot == pytest.approx(0.6 / 3)  # (e2e - ttft) / (tokens - 1)
    assert _rec(0, 0.5, []).tpot is None


def test_summary_matches_hand_computed_values():
    records = [
        _rec(0.0, 0.1, [0.1, 0.1]),  # e2e 0.3, 3 tokens
        _rec(0.0, 0.2, [0.2, 0.2]),  # e2e 0.6
        _rec(0.5, 0.3, [0.3, 0.3]),  # e2e 0.9, ends at 1.4
        _rec(0.5, 0.4, [0.4, 0.4]),  # e2e 1.2, ends at 1.7
        RequestRecord(start=0.0, end=0.1, success=False, error="HTTP 500"),
    ]
    s = summarize(records, slo={"ttft": 0.25})
    assert s["completed"] == 4 and s["failures"] == 1
    assert s["duration_s"] == pytest.approx(1.7)
    assert s["output_tokens"] == 12
    assert s["output_throughput"] == pytest.approx(12 / 1.7)
    assert s["request_throughput"] == pytest.approx(4 / 1.7)
    assert s["total_token_throughput"] == pytest.approx((40 + 12) / 1.7)
    # TTFTs 100,200,300,400 ms: mean 250, p50 250, p90 = 300 + 0.7*100, p99 = 300 + 0.97*100
    assert s["ttft_mean_ms"] == pytest.approx(250)
    assert s["ttft_p50_ms"] == pytest.approx(250)
    assert s["ttft_p90_ms"] == pytest.approx(370)
    assert s["ttft_p99_ms"] == pytest.approx(397)
    # TPOT = ITL here (constant gaps): 100..400 ms; ITL pool has each value twice
    assert s["tpot_mean_ms"] == pytest.approx(250)
    assert s["itl_p50_ms"] == pytest.approx(250)
    assert s["e2e_p50_ms"] == pytest.approx(750)
    # goodput: TTFT <= 250 ms holds for two requests
    assert s["good_requests"] == 2
    assert s["goodput"] == pytest.approx(2 / 1.7)


def test_slo_parsing_and_checks():
    assert parse_slo("ttft:500,tpot:50") == {"ttft": 0.5, "tpot": 0.05}
    assert parse_slo(None) == {}
    for bad in ("ttft", "foo:1", "ttft:x", "ttft:-1"):
        with pytest.raises(ValueError, match="SLO"):
            parse_slo(bad)
    r = _rec(0, 0.1, [0.05, 0.3])
    assert meets_slo(r, {"ttft": 0.2})
    assert not meets_slo(r, {"itl": 0.2})  # one gap of 300 ms breaks an ITL SLO
    assert meets_slo(r, {"tpot": 0.2}) and not meets_slo(r, {"tpot": 0.1})  # tpot = 0.175
    assert not meets_slo(RequestRecord(0, 1, False), {})


def test_empty_and_offline_results():
    s = summarize([], duration=1.0)
    assert s["completed"] == 0 and math.isnan(s["ttft_p50_ms"])
    r = OfflineResult("leaflm", 4, 400, 200, 2.0, 100.0)
    assert (r.requests_per_s, r.output_tok_per_s, r.total_tok_per_s) == (2.0, 100.0, 300.0)
    assert OfflineResult.from_dict(r.to_dict()) == r
