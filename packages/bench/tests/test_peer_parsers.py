"""Reading the peers' own output into the bench's records, on output captured from real runs.

The samples in tests/data are tiny smoke runs of `llama-batched-bench` (4 sequences of 16
in / 16 out on this project's F32 GGUF), once as its markdown table and once as JSONL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from leaflm.bench.peers.llama_cpp import parse_batched_bench
from leaflm.bench.peers.offline import batched_bench_result, vllm_offline_job
from leaflm.bench.workload import BenchRequest

DATA = Path(__file__).parent / "data"


def test_markdown_table_rows_are_read_in_order():
    rows = parse_batched_bench((DATA / "llama_batched_bench_md.txt").read_text())
    assert [int(r["pl"]) for r in rows] == [2, 4]
    last = rows[-1]
    assert (last["pp"], last["tg"], last["n_kv"]) == (16, 16, 128)
    assert (last["t_pp"], last["t_tg"], last["t"]) == (0.427, 2.904, 3.332)
    assert last["speed_tg"] == 22.04


def test_jsonl_rows_are_read_and_agree_with_their_own_totals():
    (row,) = parse_batched_bench((DATA / "llama_batched_bench.jsonl").read_text())
    assert (row["pp"], row["tg"], row["pl"]) == (16, 16, 4)
    assert row["t"] == pytest.approx(row["t_pp"] + row["t_tg"], abs=1e-5)
    assert row["speed_tg"] == pytest.approx(row["pl"] * row["tg"] / row["t_tg"], rel=1e-5)


def test_a_batched_bench_row_becomes_an_offline_record():
    rows = parse_batched_bench((DATA / "llama_batched_bench.jsonl").read_text())
    result = batched_bench_result("llama-cpp", rows, peak_mb=600.0)
    assert (result.backend, result.num_requests) == ("llama-cpp", 4)
    assert (result.prompt_tokens, result.output_tokens) == (64, 64)
    assert result.elapsed_s == rows[0]["t"]  # end to end: prefill + decode
    assert result.output_tok_per_s == pytest.approx(64 / rows[0]["t"])
    assert result.peak_memory_mb == 600.0 and "prefill 0.3 s + decode 2.7 s" in result.note


def test_output_without_results_is_a_clear_error():
    with pytest.raises(ValueError, match="no result rows"):
        parse_batched_bench("main: error: unable to load model\n")


def test_the_vllm_job_carries_the_exact_token_ids_and_lengths():
    requests = [BenchRequest("a", [5, 6, 7], 4), BenchRequest("b", [8], 300)]
    job = vllm_offline_job(requests, "/models/m")
    assert job["prompts"] == [[5, 6, 7], [8]] and job["max_tokens"] == [4, 300]
    assert job["dtype"] == "float32" and job["max_model_len"] == 301
