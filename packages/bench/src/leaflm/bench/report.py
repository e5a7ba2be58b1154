"""Turn one benchmark run (a results dict) into report.md, CSVs, results.json and PNGs.

The results dict is the bench's only interchange format: `leaflm bench report` builds it by
running everything, tests build a small synthetic one, and `--from-json` rebuilds a report
from a saved one. Every figure in the report comes with its ratio, and each target from the
issue is checked and marked met, MISSED or not measured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from leaflm.bench import peer_targets, plots
from leaflm.bench.checks import Check, ratio_check
from leaflm.bench.metrics import OfflineResult

# The targets (2-core CPU, float32, default model, 64 requests 128 in / 128 out).
OFFLINE_TARGETS = {"hf-single": 15.0, "hf-static": 2.0, "hf-cb": 3.0}
SERVING_TARGET: dict[str, Any] = {
    "baseline": "hf-serve",
    "concurrency": 16,
    "throughput_ratio": 3.0,
}


def offline_table(results: Sequence[OfflineResult]) -> pd.DataFrame:
    """One row per backend, with leaflm's speed-up over it on output tokens/s."""
    ref = next((r.output_tok_per_s for r in results if r.backend == "leaflm"), None)
    rows = []
    for r in results:
        speedup = ref / r.output_tok_per_s if ref and r.output_tok_per_s > 0 else math.nan
        rows.append({
            "backend": r.backend,
            "requests": r.num_requests,
            "output tok/s": r.output_tok_per_s,
            "total tok/s": r.total_tok_per_s,
            "req/s": r.requests_per_s,
            "time (s)": r.elapsed_s,
            "peak mem (MiB)": r.peak_memory_mb,
            "leaflm speed-up": 1.0 if r.backend == "leaflm" else speedup,
            "note": r.note,
        })  # fmt: skip
    return pd.DataFrame(rows)


SERVING_COLUMNS = {
    "target": "target",
    "concurrency": "users",
    "completed": "done",
    "failures": "failed",
    "unfinished": "cut off",
    "output_throughput": "out tok/s",
    "request_throughput": "req/s",
    "ttft_mean_ms": "TTFT mean",
    "ttft_p50_ms": "TTFT p50",
    "ttft_p90_ms": "TTFT p90",
    "ttft_p99_ms": "TTFT p99",
    "tpot_mean_ms": "TPOT mean",
    "tpot_p50_ms": "TPOT p50",
    "tpot_p99_ms": "TPOT p99",
    "itl_p50_ms": "ITL p50",
    "itl_p99_ms": "ITL p99",
    "e2e_p50_ms": "E2E p50",
    "e2e_p99_ms": "E2E p99",
    "goodput": "goodput (req/s)",
    "server_peak_rss_mb": "server peak RSS (MiB)",
    "server_ready_s": "ready (s)",
}


def serving_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Serving metrics (latencies in ms), plus leaflm's throughput ratio at each level."""
    if not rows:
        return pd.DataFrame(columns=list(SERVING_COLUMNS.values()))
    frame = pd.DataFrame(rows)
    leaf = {r["concurrency"]: r["output_throughput"] for r in rows if r["target"] == "leaflm"}
    frame["leaflm out-tok ratio"] = [
        leaf[c] / t if c in leaf and t and t > 0 else math.nan
        for c, t in zip(frame["concurrency"], frame["output_throughput"], strict=True)
    ]
    keep = [c for c in SERVING_COLUMNS if c in frame.columns]
    out = frame[[*keep, "leaflm out-tok ratio"]].rename(columns=SERVING_COLUMNS)
    return out.sort_values(["users", "target"]).reset_index(drop=True)


def check_targets(
    offline: Sequence[OfflineResult], serving: Sequence[dict[str, Any]]
) -> list[Check]:
    """Evaluate the issue's targets on whatever this run measured."""
    checks = []
    by_name = {r.backend: r for r in offline}
    leaf = by_name.get("leaflm")
    for name, need in OFFLINE_TARGETS.items():
        required = f"leaflm offline output tok/s ≥ {need:g}× {name}"
        other = by_name.get(name)
        if leaf is None or other is None or other.output_tok_per_s <= 0:
            checks.append(Check(f"offline vs {name}", required, "—", "not measured"))
            continue
        checks.append(ratio_check(f"offline vs {name}", required, leaf.output_tok_per_s,
                                  other.output_tok_per_s, need))  # fmt: skip
    base, level = SERVING_TARGET["baseline"], SERVING_TARGET["concurrency"]
    need = float(SERVING_TARGET["throughput_ratio"])
    rows = {(r["target"], r["concurrency"]): r for r in serving}
    ours, theirs = rows.get(("leaflm", level)), rows.get((base, level))
    name_tp, name_ttft = f"serving throughput @{level} users", f"serving p50 TTFT @{level} users"
    req_tp = f"leaflm output tok/s ≥ {need:g}× {base}"
    req_ttft = f"leaflm p50 TTFT < {base}"
    if ours is None or theirs is None or not theirs["output_throughput"] > 0:
        checks.append(Check(name_tp, req_tp, "—", "not measured"))
        checks.append(Check(name_ttft, req_ttft, "—", "not measured"))
        return checks
    checks.append(ratio_check(name_tp, req_tp, ours["output_throughput"],
                              theirs["output_throughput"], need))  # fmt: skip
    a, b = ours["ttft_p50_ms"], theirs["ttft_p50_ms"]
    ttft_ratio = b / a if a > 0 else math.nan
    checks.append(Check(
        name_ttft, req_ttft, f"{a:.0f} ms vs {b:.0f} ms ({ttft_ratio:.2f}× lower)",
        "met" if a < b else "MISSED",
    ))  # fmt: skip
    return checks


def markdown_table(frame: pd.DataFrame, digits: int = 1) -> str:
    """A GitHub markdown table (pandas' to_markdown needs tabulate, which we do not ship)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "—"
            return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:,.0f}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _machine_lines(machine: dict[str, Any]) -> list[str]:
    return [f"- **{key}**: {value}" for key, value in machine.items() if value is not None]


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write report.md, results.json, offline.csv, serving.csv and the PNGs into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    offline = [OfflineResult.from_dict(d) for d in results.get("offline", [])]
    serving = list(results.get("serving", []))
    raw = results.get("serving_raw", {})
    # A run against the CPU peers is checked on the peers' targets (and on HF's only if it
    # also ran an HF baseline); any other run on HF's.
    checks = check_targets(offline, serving)
    if peer_targets.has_peers(offline, serving):
        if all(c.status == "not measured" for c in checks):
            checks = []
        checks += peer_targets.check_peer_targets(offline, serving)

    (out / "results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    off_frame, srv_frame = offline_table(offline), serving_table(serving)
    if offline:
        off_frame.to_csv(out / "offline.csv", index=False)
        plots.offline_bars(offline, out / "offline_throughput.png")
    if serving:
        pd.DataFrame(serving).to_csv(out / "serving.csv", index=False)
        plots.throughput_vs_concurrency(serving, out / "throughput_vs_concurrency.png")
        plots.latency_vs_concurrency(serving, out / "latency_vs_concurrency.png")
    if raw:
        plots.ttft_cdf(raw, out / "ttft_cdf.png")

    cfg = results.get("config", {})
    lines = [f"# {results.get('title', 'leaflm benchmark')}", ""]
    if results.get("created"):
        lines += [f"Run {results['created']}.", ""]
    lines += ["Command:", "", "```", results.get("command", "(not recorded)"), "```", ""]
    lines += ["## Machine", "", *_machine_lines(results.get("machine", {})), ""]
    if cfg:
        lines += ["## Workload", "", *[f"- **{k}**: {v}" for k, v in cfg.items()], ""]
    lines += ["## Targets", "", markdown_table(pd.DataFrame([c.__dict__ for c in checks])), ""]
    missed = [c for c in checks if c.status == "MISSED"]
    if missed:
        lines += ["**Missed:** " + "; ".join(f"{c.name} ({c.measured})" for c in missed), ""]
    if offline:
        lines += ["## Offline throughput", "", markdown_table(off_frame, 2), ""]
        lines += ["![offline throughput](offline_throughput.png)", ""]
    if serving:
        lines += ["## Serving", "", "Latencies in ms.", "", markdown_table(srv_frame), ""]
        lines += ["![throughput vs concurrency](throughput_vs_concurrency.png)", ""]
        lines += ["![latency vs concurrency](latency_vs_concurrency.png)", ""]
    if raw:
        lines += ["![TTFT CDF](ttft_cdf.png)", ""]
    notes = list(results.get("notes", [])) + [f"problem: {p}" for p in results.get("problems", [])]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
