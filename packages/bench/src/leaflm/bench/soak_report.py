"""A soak run's report: results.json, report.md and a timeline PNG (RSS, in flight, KV blocks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PLOT = "soak_timeline.png"


def timeline_plot(raw: dict[str, Any], path: Path) -> Path:
    """Server RSS, requests in flight and KV blocks in use over the run; load end marked."""
    samples = raw["samples"]
    t = [s["t"] for s in samples]

    def gauge(name: str) -> list[float]:
        return [s["gauges"].get(name, float("nan")) for s in samples]

    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), dpi=110, sharex=True)
    axes[0].plot(t, [s["rss_mb"] if s["rss_mb"] is not None else float("nan") for s in samples],
                 color="#2e7d32")  # fmt: skip
    axes[0].set_ylabel("server RSS (MB)")
    axes[1].plot(t, [s["client_in_flight"] for s in samples], label="client: requests open")
    axes[1].plot(t, gauge("gateway_requests_in_flight"), label="gateway in flight", alpha=0.8)
    axes[1].plot(t, gauge("num_requests_running"), label="engine running", alpha=0.8)
    axes[1].plot(t, gauge("num_requests_waiting"), label="engine waiting", alpha=0.8)
    axes[1].set_ylabel("requests")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[2].plot(t, gauge("kv_cache_blocks_used"), color="#6a1b9a")
    axes[2].set_ylabel("KV blocks in use")
    axes[2].set_xlabel("seconds since start")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax is not axes[0]:  # RSS keeps its own range, so growth stays visible
            ax.set_ylim(bottom=0)
        if raw.get("load_end_s"):
            ax.axvline(raw["load_end_s"], color="k", linestyle="--", alpha=0.5)
    axes[0].set_title("Soak timeline (dashed line: load stops, drain begins)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _markdown(results: dict[str, Any]) -> str:
    s, cfg = results["summary"], results["config"]
    verdict = "PASSED" if results["passed"] else "FAILED"
    lines = [
        f"# {results['title']}",
        "",
        f"**{verdict}** — {results['created']}",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"{cfg['concurrency']} concurrent streaming clients for {cfg['duration_s']:g} s "
        f"(at most {cfg['max_requests']} requests), prompts of 1–{cfg['max_prompt_words']} "
        f"words, 1–{cfg['max_output_tokens']} output tokens, "
        f"{cfg['disconnect_share']:.0%} disconnected mid-stream, "
        f"{cfg['invalid_share']:.0%} invalid; per-request timeout {cfg['request_timeout_s']:g} s, "
        f"RSS growth bound {cfg['max_rss_growth_mb']:g} MB, seed {cfg['seed']}.",
        "",
        "## Checks",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    for c in results["checks"]:
        detail = c["detail"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c['name']} | {'ok' if c['ok'] else 'FAILED'} | {detail} |")
    lines += ["", "## Requests", "", "| kind | outcome | count |", "|---|---|---|"]
    for kind, outcomes in s["by_kind"].items():
        for outcome, count in sorted(outcomes.items()):
            lines.append(f"| {kind} | {outcome} | {count} |")
    lines += ["", "| route | HTTP status | count |", "|---|---|---|"]
    for route, count in s.get("by_route", {}).items():
        path, status = route.rsplit(" ", 1)
        lines.append(f"| `{path}` | {status} | {count} |")
    p50, worst = s["ok_latency_p50_s"], s["ok_latency_max_s"]
    took = (
        f"; complete streams took {p50:.2f} s at the median, {worst:.2f} s at most" if p50 else ""
    )
    lines += [
        "",
        f"{s['requests']} requests in {s['load_seconds']:.0f} s ({s['requests_per_s']:.2f}/s), "
        f"{s['stream_chunks']} stream chunks read{took}.",
        "",
        f"![timeline]({PLOT})",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in results["machine"].items()]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def write_soak_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write results.json, report.md and the timeline into `out`; returns report.md's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    timeline_plot(results["raw"], out / PLOT)
    path = out / "report.md"
    path.write_text(_markdown(results), encoding="utf-8")
    return path
