"""Serving sweep: every target x every concurrency level, Locust in a separate process.

For each target the bench starts its server (or uses a given URL), sends one untimed warm-up
request, then for each concurrency level runs `leaflm.bench.load_runner` in a subprocess
with a bounded request list and time limit, and aggregates the per-request records into one
row of metrics. Managed servers are stopped before the next target starts, so targets never
compete for the CPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests

from leaflm.bench.metrics import RequestRecord, summarize
from leaflm.bench.offline import LEAFLM_VARIANTS
from leaflm.bench.peers import PEER_TARGETS, TreePeakRss
from leaflm.bench.servers import KINDS, ManagedServer, free_port, server_command
from leaflm.bench.sse import APIS, EOS_STYLES, Target, build_payload, stream_request
from leaflm.bench.workload import BenchRequest, arrival_times

# How each managed server is told to ignore EOS (see sse.EOS_STYLES): every kind takes
# `ignore_eos` but transformers serve, which rejects it and takes a GenerationConfig as JSON.
_IGNORE_EOS = {
    **dict.fromkeys(LEAFLM_VARIANTS, "field"),
    "naive": "field",
    "hf-serve": "generation_config",
    "hf-serve-cb": "generation_config",
    "vllm-cpu": "field",
    "llama-cpp": "field",
    "llama-cpp-q4": "field",
}
MANAGED = (*KINDS, *PEER_TARGETS)


@dataclass
class TargetSpec:
    """A target by name: a managed server kind, or an external URL (`name=URL`)."""

    name: str
    kind: str | None = None  # one of MANAGED, None for an external URL
    url: str | None = None
    api: str = "completions"
    ignore_eos: str = "field"  # for URL targets; managed kinds use _IGNORE_EOS
    extra_body: dict[str, Any] = field(default_factory=dict)


MIN_LEVEL_SECONDS = 10.0  # a level with less time left than this is not started


def parse_target(text: str, api: str = "completions", eos_style: str = "") -> TargetSpec:
    """A managed kind (`leaflm`, `hf-serve`, `hf-serve-cb`, `naive`, and the peers `vllm-cpu`,
    `llama-cpp`, `llama-cpp-q4`), or `NAME=URL` for a running server.

    A URL ending in `/generate_stream` is driven with TGI's native API; any other URL is an
    OpenAI-compatible base URL. Only 127.0.0.1/localhost URLs are accepted (run containers
    with host networking). A URL target gets the same `ignore_eos: true` as every managed
    one, unless it is named like a managed kind (`hf-serve=URL` gets that kind's knob) or
    `eos_style` (one of sse.EOS_STYLES) says otherwise, e.g. `min_tokens` for a server that
    rejects `ignore_eos`.
    """
    if api not in APIS:
        raise ValueError(f"unknown api {api!r}: choose from {', '.join(APIS)}")
    if eos_style and eos_style not in EOS_STYLES:
        raise ValueError(f"unknown ignore-EOS style {eos_style!r}: use one of {EOS_STYLES}")
    if "=" not in text:
        if text not in MANAGED:
            raise ValueError(
                f"unknown target {text!r}: use one of {', '.join(MANAGED)} or NAME=URL"
            )
        return TargetSpec(name=text, kind=text, api=api)
    name, url = text.split("=", 1)
    host = httpx.URL(url).host
    if not name or host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"bad target {text!r}: expected NAME=http://127.0.0.1:PORT[/...]")
    if url.rstrip("/").endswith("/generate_stream"):
        api = "tgi"
    style = eos_style or ("none" if api == "tgi" else _IGNORE_EOS.get(name, "field"))
    return TargetSpec(name=name, url=url, api=api, ignore_eos=style)


def served_model_id(base_url: str) -> str:
    try:
        data = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=10.0).json()
        return str(data["data"][0]["id"])
    except Exception:
        return ""


def level_requests(concurrency: int, per_user: int, minimum: int, maximum: int) -> int:
    """How many requests one level sends: `per_user` per user, clamped to [minimum, maximum]."""
    return max(minimum, min(maximum, concurrency * per_user))


def run_level(
    target: Target,
    workload: list[BenchRequest],
    concurrency: int,
    num_requests: int,
    time_limit: float,
    request_rate: float = math.inf,
    burstiness: float = 1.0,
    seed: int = 0,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """One Locust run in a subprocess; returns its raw result (records, duration, stats)."""
    chosen = [workload[i % len(workload)] for i in range(num_requests)]
    arrivals = arrival_times(num_requests, request_rate, burstiness, seed)
    job = {
        "target": asdict(target),
        "users": concurrency,
        "time_limit": time_limit,
        "requests": [
            {
                "prompt": r.prompt,
                "messages": r.messages,
                "max_tokens": r.output_len,
                "prompt_tokens": r.prompt_len,
                "arrival": t,
            }
            for r, t in zip(chosen, arrivals, strict=True)
        ],
    }
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-m", "leaflm.bench.load_runner", str(job_path), str(out_path)],
            capture_output=True,
            text=True,
            timeout=time_limit + 120,
        )
        if proc.returncode != 0 or not out_path.is_file():
            raise RuntimeError(f"load runner failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        return json.loads(out_path.read_text(encoding="utf-8"))


def _warm_up(target: Target, workload: list[BenchRequest]) -> None:
    with requests.Session() as session:
        payload = build_payload(target, workload[0].prompt, 4, workload[0].messages)
        record = stream_request(session, target, payload, timeout=300)
    if not record.success:
        raise RuntimeError(f"{target.name}: warm-up request failed: {record.error}")


def sweep_target(
    spec: TargetSpec,
    workload: list[BenchRequest],
    levels: list[int],
    target: Target,
    slo: dict[str, float],
    per_user: int,
    min_requests: int,
    max_requests: int,
    time_limit: float,
    request_rate: float,
    burstiness: float,
    log: Callable[[str], None],
    deadline: float = math.inf,
    problems: list[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """All levels for one already-running target; levels past `deadline` are skipped."""
    _warm_up(target, workload)
    rows, raw = [], {}
    for users in levels:
        left = deadline - time.monotonic()
        if left < MIN_LEVEL_SECONDS:
            if problems is not None:
                problems.append(f"{spec.name}@{users} users: skipped, time budget spent")
            continue
        n = level_requests(users, per_user, min_requests, max_requests)
        limit = min(time_limit, left)
        log(f"[serve] {spec.name}: {users} users, {n} requests, at most {limit:.0f} s ...")
        result = run_level(target, workload, users, n, limit, request_rate, burstiness)
        records = [RequestRecord.from_dict(r) for r in result["records"]]
        row = {"target": spec.name, "concurrency": users, "planned": n}
        row.update(summarize(records, result["duration_s"], slo))
        row["unfinished"] = result["planned"] - len(records)
        row["timed_out"] = result["timed_out"]
        rows.append(row)
        raw[str(users)] = result["records"]
        log(
            f"[serve] {spec.name}@{users}: {row['output_throughput']:.1f} out tok/s, "
            f"p50 TTFT {row['ttft_p50_ms']:.0f} ms, failures {row['failures']}, "
            f"unfinished {row['unfinished']}"
        )
    return rows, raw


def managed_server(
    kind: str,
    model_dir: str,
    port: int,
    log_path: Path,
    device: str,
    dtype: str,
    users: int,
    kv_cache_memory: str | None = None,
) -> ManagedServer:
    """A fresh, not yet started server of `kind`; a peer gets `users` parallel slots.

    Every bench mode that starts servers (this sweep, `vllm_bench`) starts them here.
    """
    if kind in PEER_TARGETS:
        from leaflm.bench.peers.targets import peer_server

        if device != "cpu":
            raise ValueError(f"peer target {kind!r} runs on the CPU only, not {device!r}")
        return peer_server(kind, model_dir, port, log_path, parallel=users)
    cmd = server_command(kind, model_dir, port, device, dtype, kv_cache_memory)
    return ManagedServer(kind, cmd, port, log_path)


def run_serve(
    specs: list[TargetSpec],
    workload: list[BenchRequest],
    model_dir: str,
    levels: list[int],
    log_dir: str | Path,
    slo: dict[str, float] | None = None,
    per_user: int = 2,
    min_requests: int = 4,
    max_requests: int = 64,
    time_limit: float = 300.0,
    request_rate: float = math.inf,
    burstiness: float = 1.0,
    device: str = "cpu",
    dtype: str = "auto",
    log: Callable[[str], None] = print,
    budget_s: float = math.inf,
    kv_cache_memory: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[dict[str, Any]]]], list[str]]:
    """Sweep every target; returns metric rows, raw records per target/level, and problems.

    `kv_cache_memory` sizes a managed leaflm server's KV cache (None: the engine's default).

    A target that cannot start is reported in `problems` and skipped, not fatal. After
    `budget_s` seconds no new level starts and running levels are cut short.
    """
    if not levels or any(u < 1 for u in levels):
        raise ValueError(f"concurrency levels must be >= 1, got {levels}")
    rows: list[dict[str, Any]] = []
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    problems: list[str] = []
    common: dict[str, Any] = dict(
        slo=slo or {},
        per_user=per_user,
        min_requests=min_requests,
        max_requests=max_requests,
        time_limit=time_limit,
        request_rate=request_rate,
        burstiness=burstiness,
        log=log,
        deadline=time.monotonic() + budget_s,
        problems=problems,
    )
    for spec in specs:
        if time.monotonic() > common["deadline"] - MIN_LEVEL_SECONDS:
            problems.append(f"{spec.name}: skipped, time budget spent")
            continue
        api = "chat" if workload[0].messages is not None and spec.api != "tgi" else spec.api
        try:
            if spec.kind is None:
                assert spec.url is not None
                target = Target(
                    spec.name,
                    spec.url,
                    api,
                    served_model_id(spec.url),
                    spec.ignore_eos,
                    spec.extra_body,
                )
                t_rows, t_raw = sweep_target(spec, workload, levels, target, **common)
            else:
                port = free_port()
                log_path = Path(log_dir) / f"server-{spec.name}.log"
                server = managed_server(spec.kind, model_dir, port, log_path, device, dtype,
                                         max(levels), kv_cache_memory)  # fmt: skip
                log(f"[serve] starting {spec.name}: {' '.join(server.command)}")
                with server:
                    assert server.process is not None
                    target = Target(
                        spec.name,
                        server.base_url,
                        api,
                        served_model_id(server.base_url),
                        _IGNORE_EOS[spec.kind],
                        spec.extra_body,
                    )
                    with TreePeakRss(server.process.pid) as rss:
                        t_rows, t_raw = sweep_target(spec, workload, levels, target, **common)
                for row in t_rows:  # the server's whole process tree, over its whole sweep
                    row["server_peak_rss_mb"] = rss.peak_mb
                    row["server_ready_s"] = server.ready_s
        except Exception as exc:
            problems.append(f"{spec.name}: {exc}")
            log(f"[serve] {spec.name} skipped: {exc}")
            continue
        rows += t_rows
        raw[spec.name] = t_raw
    return rows, raw, problems
