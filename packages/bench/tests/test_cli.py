"""`leaflm bench` is registered through the entry point and rejects bad input clearly."""

from __future__ import annotations

import json

import pytest

from leaflm.engine.cli import build_parser, main


def test_bench_subcommands_are_registered():
    parser = build_parser()
    for sub in ("throughput", "serve", "report", "gate"):
        args = parser.parse_args(["bench", sub])
        assert callable(args.func)
    args = parser.parse_args(
        ["bench", "serve", "--concurrency", "1,4,16,64", "--target", "tgi=http://127.0.0.1:1"]
    )
    assert args.concurrency == [1, 4, 16, 64] and args.target == ["tgi=http://127.0.0.1:1"]


def test_a_serving_sweep_sends_each_request_of_a_level_its_own_prompt():
    """Repeated prompts would let a server's prompt cache skip their prefill and flatter TTFT."""
    from leaflm.bench.run import serve_prompt_count

    sweep = ["--concurrency", "1,4,16", "--requests-per-user", "10", "--max-requests", "160"]
    parser = build_parser()
    assert serve_prompt_count(parser.parse_args(["bench", "serve", *sweep])) == 160
    assert serve_prompt_count(parser.parse_args(["bench", "serve", "--num-prompts", "8"])) == 8
    report = parser.parse_args(["bench", "report", "--num-prompts", "64", *sweep])
    assert report.num_prompts == 64 and serve_prompt_count(report) == 160  # offline keeps 64


def test_bad_arguments_are_reported_not_raised(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "serve", "--concurrency", "0,4"])
    assert main(["bench", "throughput", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().out
    assert main(["bench", "serve", "--model", "/nonexistent"]) == 2
    assert "not an HF model directory" in capsys.readouterr().out


def test_report_rebuilds_from_saved_json(tmp_path):
    results = {"title": "saved", "command": "leaflm bench report", "machine": {"cpu": "x"},
               "offline": [{"backend": "leaflm", "num_requests": 2, "prompt_tokens": 8,
                            "output_tokens": 8, "elapsed_s": 2.0, "peak_memory_mb": 1.0}]}  # fmt: skip
    src = tmp_path / "in" / "results.json"
    src.parent.mkdir()
    src.write_text(json.dumps(results))
    assert (
        main(
            [
                "bench",
                "report",
                "--from-json",
                str(src),
                "--out-root",
                str(tmp_path),
                "--name",
                "out",
            ]
        )
        == 0
    )
    text = (tmp_path / "out" / "report.md").read_text()
    assert "# saved" in text and "| leaflm | 2 | 4.00 |" in text
    assert (tmp_path / "out" / "offline_throughput.png").is_file()
