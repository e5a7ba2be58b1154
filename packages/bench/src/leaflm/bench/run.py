"""What each `leaflm bench` subcommand does, from parsed arguments to printed tables and files."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from leaflm.bench.machine import describe_machine
from leaflm.bench.metrics import OfflineResult, parse_slo
from leaflm.bench.model_dir import resolve_model_dir
from leaflm.bench.peers import PEER_BACKENDS, PEER_TARGETS
from leaflm.bench.workload import BenchRequest, chat_workload, random_workload

DEFAULT_REPORT_BUDGET_MIN = 28.0  # `nox -s bench` must finish in 30 minutes on 2 cores


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}: use auto, cpu or cuda[:N]")
    return name


def _workload(
    args: argparse.Namespace, model_dir: Path, output_len: int, num_prompts: int | None = None
) -> list[BenchRequest]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    count = num_prompts or args.num_prompts
    if args.workload == "chat":
        return chat_workload(tokenizer, count, args.system_prompts,
                             output_len=output_len, seed=args.seed)  # fmt: skip
    return random_workload(tokenizer, count, args.input_len, output_len,
                           args.range_ratio, args.seed)  # fmt: skip


def serve_prompt_count(args: argparse.Namespace) -> int:
    """Distinct prompts a serving sweep sends: `--num-prompts` for `bench serve` if given,
    else one per request of its largest level, as `vllm bench serve` does.

    Cycling fewer prompts repeats whole prompts, which a server's prompt cache (llama-server's
    slots, leaflm's prefix cache) answers without a prefill: TTFT would measure the cache.
    """
    from leaflm.bench.serve import level_requests

    asked = getattr(args, "serve_num_prompts", None)
    if asked:
        return int(asked)
    return max(
        level_requests(users, args.requests_per_user, args.min_requests, args.max_requests)
        for users in args.concurrency
    )


def _command() -> str:
    return shlex.join(["leaflm", *sys.argv[1:]]) if sys.argv and sys.argv[0] else "leaflm bench"


def _config(args: argparse.Namespace, model_dir: Path, device: str) -> dict[str, Any]:
    cfg = {"model": str(model_dir), "device": device, "dtype": args.dtype,
           "workload": args.workload, "seed": args.seed}  # fmt: skip
    if getattr(args, "num_prompts", None):  # the offline workload's (serving has serve_prompts)
        cfg["num_prompts"] = args.num_prompts
    if args.workload == "random":
        cfg.update(input_len=args.input_len, range_ratio=args.range_ratio)
    else:
        cfg.update(system_prompts=args.system_prompts)
    return cfg


def _check_llama_model(args: argparse.Namespace, names: list[str]) -> None:
    """llama.cpp runs the embedded model's GGUF: with another --model it would race others."""
    if args.model is not None and any(n.split("=", 1)[0].startswith("llama-cpp") for n in names):
        raise ValueError("the llama-cpp peers run the embedded default model only; drop --model")


def _offline(
    args: argparse.Namespace, model_dir: Path, device: str, failures: list[str] | None = None
) -> list[OfflineResult]:
    from leaflm.bench.offline import run_throughput

    _check_llama_model(args, list(args.backends))
    requests = _workload(args, model_dir, args.output_len)
    subsets = {"hf-single": args.hf_single_requests, "hf-static": args.hf_static_requests,
               "hf-cb": args.hf_cb_requests}  # fmt: skip
    return run_throughput(requests, model_dir, args.backends, device, args.dtype,
                          {k: v for k, v in subsets.items() if v}, args.batch_size,
                          failures=failures, repeats=args.repeats)  # fmt: skip


def _serving(
    args: argparse.Namespace,
    model_dir: Path,
    device: str,
    output_len: int,
    log_dir: Path,
    budget_s: float = math.inf,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    from leaflm.bench.serve import parse_target, run_serve

    _check_llama_model(args, [*args.targets, *args.target])
    min_tokens = set(getattr(args, "min_tokens_for", []) or [])
    specs = [parse_target(t) for t in args.targets] + [
        parse_target(t, eos_style="min_tokens" if t.split("=", 1)[0] in min_tokens else "")
        for t in args.target
    ]
    requests = _workload(args, model_dir, output_len, serve_prompt_count(args))
    return run_serve(specs, requests, str(model_dir), args.concurrency, log_dir,
                     slo=parse_slo(args.slo), per_user=args.requests_per_user,
                     min_requests=args.min_requests, max_requests=args.max_requests,
                     time_limit=args.time_limit, request_rate=args.request_rate,
                     burstiness=args.burstiness, device=device, dtype=args.dtype,
                     budget_s=budget_s)  # fmt: skip


def _print_offline(results: list[OfflineResult]) -> None:
    from leaflm.bench.report import markdown_table, offline_table

    print(markdown_table(offline_table(results), 2))


def _base_results(args: argparse.Namespace, model_dir: Path, device: str) -> dict[str, Any]:
    return {
        "title": "leaflm benchmark",
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": _command(),
        "machine": describe_machine(),
        "config": _config(args, model_dir, device),
        "notes": [],
        "problems": [],
    }


def cmd_throughput(args: argparse.Namespace) -> int:
    device = _device(args.device)
    model_dir = resolve_model_dir(args.model)
    offline = _offline(args, model_dir, device)
    _print_offline(offline)
    if args.out:
        from leaflm.bench.report import write_report

        results = _base_results(args, model_dir, device)
        results.update(title="leaflm offline throughput", offline=[r.to_dict() for r in offline])
        print(f"report: {write_report(results, args.out)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from leaflm.bench.report import markdown_table, serving_table, write_report

    device = _device(args.device)
    model_dir = resolve_model_dir(args.model)
    budget = args.budget_minutes * 60 if args.budget_minutes else math.inf
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(args.out) if args.out else Path(tmp)
        rows, raw, problems = _serving(args, model_dir, device, args.output_len, log_dir, budget)
    print(markdown_table(serving_table(rows)))
    for problem in problems:
        print(f"problem: {problem}")
    if args.out:
        results = _base_results(args, model_dir, device)
        results["config"].update(
            serve_output_len=args.output_len, serve_prompts=serve_prompt_count(args)
        )
        results.update(
            title="leaflm serving sweep", serving=rows, serving_raw=raw, problems=problems
        )
        print(f"report: {write_report(results, args.out)}")
    return 0 if rows else 1


def cmd_vllm_serve(args: argparse.Namespace) -> int:
    """Every target served in turn, measured by `vllm bench serve` (see vllm_bench.py)."""
    from leaflm.bench.report import markdown_table
    from leaflm.bench.vllm_bench import RunSettings, run_vllm_bench
    from leaflm.bench.vllm_bench_report import table, token_notes, write_report

    device = _device(args.device)
    _check_llama_model(args, list(args.targets))
    model_dir = resolve_model_dir(args.model)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        run = RunSettings(args.num_prompts, args.input_len, args.output_len, args.seed,
                          args.num_warmups, args.request_rate, args.timeout,
                          [] if args.keep_alive else ["Connection=close"])  # fmt: skip
        rows, problems = run_vllm_bench(args.targets, model_dir, out, args.concurrency,
                                        args.api, run, device, args.dtype,
                                        rounds=args.rounds)  # fmt: skip
        print(markdown_table(table(rows)))
        for line in [*token_notes(rows), *(f"problem: {p}" for p in problems)]:
            print(line)
        if args.out:
            results = {
                "title": "Serving measured with vLLM's `vllm bench serve`",
                "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": _command(),
                "machine": describe_machine(),
                "config": {
                    "model": str(model_dir),
                    "device": device,
                    "dtype": args.dtype,
                    "api": ",".join(args.api),
                    "concurrency": args.concurrency,
                    "num_prompts": args.num_prompts,
                    "input_len": args.input_len,
                    "output_len": args.output_len,
                    "seed": args.seed,
                    "rounds": args.rounds,
                    "headers": ",".join(run.headers) or "none",
                },
                "rows": rows,
                "problems": problems,
                "notes": [f"whole run took {(time.monotonic() - started) / 60:.1f} minutes"],
            }
            print(f"report: {write_report(results, out)}")
    return 0 if rows and not problems and all(r["tokens_ok"] for r in rows) else 1


def _default_name(args: argparse.Namespace, device: str) -> str:
    model = "smollm2" if args.model is None else Path(args.model).name.lower()
    return f"{'gpu' if device.startswith('cuda') else 'cpu'}-{model}"


def cmd_report(args: argparse.Namespace) -> int:
    from leaflm.bench.report import write_report

    if args.from_json:
        results = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        out = Path(args.out_root) / (args.name or Path(args.from_json).parent.name)
        print(f"report: {write_report(results, out)}")
        return 0
    started = time.monotonic()
    budget = (args.budget_minutes or DEFAULT_REPORT_BUDGET_MIN) * 60
    device = _device(args.device)
    model_dir = resolve_model_dir(args.model)
    out = Path(args.out_root) / (args.name or _default_name(args, device))
    out.mkdir(parents=True, exist_ok=True)
    results = _base_results(args, model_dir, device)
    peers = set(PEER_BACKENDS) & set(args.backends) or set(PEER_TARGETS) & set(args.targets)
    against = "vLLM-CPU and llama.cpp" if peers else "HF Transformers"
    results["title"] = f"leaflm vs {against} — {out.name}"
    if not args.skip_offline:
        offline = _offline(args, model_dir, device, failures=results["problems"])
        results["offline"] = [r.to_dict() for r in offline]
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        results["config"].update(output_len=args.output_len, hf_static_batch=args.batch_size)
        _print_offline(offline)
    if not args.skip_serving:
        results["config"].update(serve_output_len=args.serve_output_len,
                                 serve_prompts=serve_prompt_count(args),
                                 concurrency=args.concurrency, slo=args.slo,
                                 requests_per_user=args.requests_per_user,
                                 max_requests=args.max_requests,
                                 time_limit_per_level_s=args.time_limit,
                                 budget_minutes=budget / 60)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            left = budget - (time.monotonic() - started)
            rows, raw, problems = _serving(
                args, model_dir, device, args.serve_output_len, Path(tmp), left
            )
        results.update(serving=rows, serving_raw=raw, problems=results["problems"] + problems)
    results["notes"].append(f"whole run took {(time.monotonic() - started) / 60:.1f} minutes")
    print(f"report: {write_report(results, out)}")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from leaflm.bench.gate import evaluate, load_thresholds, measure

    config = load_thresholds(args.thresholds)
    ratios = measure(config)
    failures = evaluate(ratios, config["thresholds"])
    for name, ratio in ratios.items():
        need = config["thresholds"].get(name)
        print(f"gate: leaflm / {name} output tok/s = {ratio:.2f}× (threshold {need})")
    for failure in failures:
        print(f"gate FAILED: {failure}")
    return 1 if failures else 0


def _soak_config(args: argparse.Namespace, url: str, pid: int | None) -> Any:
    from leaflm.bench.soak import SoakConfig

    return SoakConfig(
        url=url, pid=pid, duration_s=args.duration, concurrency=args.concurrency,
        max_requests=args.max_requests, request_timeout_s=args.request_timeout,
        max_prompt_words=args.max_prompt_words, max_output_tokens=args.max_output_tokens,
        disconnect_share=args.disconnect_share, invalid_share=args.invalid_share,
        sample_interval_s=args.sample_interval, drain_timeout_s=args.drain_timeout,
        max_rss_growth_mb=args.max_rss_growth_mb, seed=args.seed, api_key=args.api_key,
    )  # fmt: skip


def cmd_soak(args: argparse.Namespace) -> int:
    """Soak a given server (--url + --pid) or one started here; 0 only if every check held."""
    from dataclasses import asdict

    from leaflm.bench.soak import run_soak
    from leaflm.bench.soak_check import evaluate, summary

    if (args.url is None) != (args.pid is None):
        raise ValueError("--url and --pid go together (the pid is needed to watch RSS)")
    results: dict[str, Any] = {
        "title": "leaflm soak",
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": _command(),
        "machine": describe_machine(),
        "notes": list(args.note),
    }
    if args.url is not None:
        config = _soak_config(args, args.url, args.pid)
        raw = run_soak(config)
    else:
        from leaflm.bench.servers import ManagedServer, free_port, server_command

        model_dir = resolve_model_dir(args.model)
        port = free_port()
        cmd = server_command("leaflm", str(model_dir), port, _device(args.device), args.dtype)
        cmd += shlex.split(args.server_args)
        results["server_command"] = shlex.join(cmd)
        with tempfile.TemporaryDirectory() as tmp:
            log_path = Path(args.out or tmp) / "server.log"
            print(f"[soak] starting: {results['server_command']}")
            with ManagedServer("leaflm", cmd, port, log_path) as server:
                assert server.process is not None
                config = _soak_config(args, server.base_url, server.process.pid)
                raw = run_soak(config)
    checks = evaluate(raw, config.max_rss_growth_mb)
    results.update(config=asdict(config), summary=summary(raw), checks=checks, raw=raw,
                   passed=all(c["ok"] for c in checks))  # fmt: skip
    for c in checks:
        print(f"soak {'ok    ' if c['ok'] else 'FAILED'} {c['name']}: {c['detail']}")
    print(
        f"soak {'PASSED' if results['passed'] else 'FAILED'}: {results['summary']['requests']} requests"
    )
    if args.out:
        from leaflm.bench.soak_report import write_soak_report

        print(f"report: {write_soak_report(results, args.out)}")
    return 0 if results["passed"] else 1


def cmd_kl(args: argparse.Namespace) -> int:
    """llama.cpp's Q4_1-vs-F32 KL on the eval text beside leaflm's GGUF-vs-fp32 (a table)."""
    from leaflm.bench.peers import llama_kl

    if args.ctx < 4:
        raise ValueError(f"--ctx must be at least 4, got {args.ctx}")
    out = Path(args.out) if args.out else None
    result = llama_kl.compare(args.ctx, args.threads, args.max_tokens, not args.no_leaflm, out)
    result["command"] = _command()
    if out is not None:
        (out / "kl.json").write_text(json.dumps(result, indent=2) + "\n")
    print(llama_kl.format_table(result))
    return 0
