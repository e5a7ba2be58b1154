"""`leaflm bench soak` passes for one minute against a real leaflm server on 127.0.0.1.

The server is the bench's own managed subprocess serving a tiny random LLaMA (cheap on two
cores); the soak drives streams, disconnects and invalid requests through it, then checks
5xx, hangs, RSS growth and that every KV block is freed. The failure side is in test_soak.
"""

from __future__ import annotations

import json

import pytest

from leaflm.engine.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from leaflm.engine.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("soak-tiny-llama"), "llama")


def test_one_minute_soak_passes_on_a_real_server(tiny_dir, tmp_path, capsys):
    out = tmp_path / "soak"
    argv = ["bench", "soak", "--model", str(tiny_dir), "--duration", "60", "--concurrency", "6",
            "--max-prompt-words", "60", "--max-output-tokens", "32", "--request-timeout", "60",
            "--server-args", "--max-model-len 512 --kv-cache-memory 16MiB", "--out", str(out)]  # fmt: skip
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads((out / "results.json").read_text())
    assert results["passed"] and all(c["ok"] for c in results["checks"])
    kinds = results["summary"]["by_kind"]
    assert kinds["stream"]["ok"] > 0
    assert kinds["disconnect"].get("disconnected", 0) > 0
    assert kinds["invalid"]["rejected"] > 0
    records = results["raw"]["records"]
    ok_paths = {r["path"] for r in records if r["outcome"] == "ok"}
    assert {"/v1/completions", "/v1/chat/completions", "/generate_stream"} <= ok_paths
    last = results["raw"]["samples"][-1]
    assert last["gauges"]["kv_cache_blocks_used"] == 0 and last["rss_mb"] > 0
    report = (out / "report.md").read_text()
    assert "**PASSED**" in report and "| FAILED |" not in report
    assert (out / "soak_timeline.png").stat().st_size > 0


def test_soak_refuses_bad_targets(capsys):
    assert main(["bench", "soak", "--url", "http://10.0.0.1:8000", "--pid", "1"]) == 2
    assert "127.0.0.1" in capsys.readouterr().out
    assert main(["bench", "soak", "--url", "http://127.0.0.1:1"]) == 2
    assert "--pid" in capsys.readouterr().out
