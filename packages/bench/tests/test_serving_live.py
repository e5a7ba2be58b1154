"""A short real serving run: the leaflm gateway and the naive HF server on a tiny model,
two streaming Locust users in a separate process, a handful of requests each."""

from __future__ import annotations

import socket

import pytest
from transformers import AutoTokenizer

from leaflm.bench.serve import parse_target, run_serve
from leaflm.bench.workload import random_workload
from leaflm.engine.testing import build_tiny_model


def _listening(port_url: str) -> bool:
    host, port = port_url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def test_sweep_against_leaflm_gateway_and_naive_server(tmp_path):
    model_dir = build_tiny_model(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    workload = random_workload(tokenizer, 4, input_len=16, output_len=12, seed=0)
    started: list[str] = []
    rows, raw, problems = run_serve(
        [parse_target("leaflm"), parse_target("naive")], workload, str(model_dir), [2],
        tmp_path / "logs", slo={"ttft": 30.0}, min_requests=4, time_limit=120,
        log=lambda msg: started.append(msg), kv_cache_memory="16MiB",
    )  # fmt: skip
    assert problems == []
    assert [(r["target"], r["concurrency"]) for r in rows] == [("leaflm", 2), ("naive", 2)]
    for row in rows:
        assert row["completed"] == 4 and row["failures"] == 0 and row["unfinished"] == 0
        assert row["output_tokens"] == 4 * 12  # ignore_eos honoured: exactly max_tokens each
        assert 0 < row["ttft_p50_ms"] <= row["e2e_p50_ms"]
        assert row["output_throughput"] > 0 and row["good_requests"] == 4
        assert 0 < row["server_ready_s"] < 120  # launch to first healthy answer
    for target in ("leaflm", "naive"):
        recs = raw[target]["2"]
        assert all(r["success"] and len(r["itl"]) >= 1 for r in recs)
    # both servers were stopped: nothing listens on their ports any more
    urls = {line.split(" --port ")[1].split()[0] for line in started if "--port" in line}
    assert len(urls) == 2
    assert any("leaflm.gateway" in line and "--kv-cache-memory 16MiB" in line for line in started)
    assert not any(_listening(f"http://127.0.0.1:{port}") for port in urls)


def test_bad_targets_are_named():
    with pytest.raises(ValueError, match="unknown target 'vllm'"):
        parse_target("vllm")
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        parse_target("tgi=http://example.com:8080")
    spec = parse_target("tgi=http://127.0.0.1:8080/generate_stream")
    assert (spec.name, spec.api, spec.kind) == ("tgi", "tgi", None)
