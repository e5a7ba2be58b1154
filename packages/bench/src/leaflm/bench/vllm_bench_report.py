"""The `leaflm bench vllm-serve` report: a table of vLLM's own numbers, a plot, notes.

Writes `vllm_bench.csv`, `results.json`, `report.md` and `vllm_bench.png` into the output
directory, next to the raw `vllm-bench/*.json` files vLLM saved. A target that did not
generate `num_prompts * output_len` tokens is flagged in the table and the notes: its
figures do not measure the same work as the others'. With several rounds, the table and
the plot show each target's median round and list every round's throughput.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from leaflm.bench import plots
from leaflm.bench.report import markdown_table
from leaflm.bench.vllm_bench import exact_throughput

COLUMNS = {
    "target": "target",
    "api": "api",
    "concurrency": "users",
    "completed": "done",
    "failed": "failed",
    "total_output_tokens": "out tokens",
    "expected_output_tokens": "expected",
    "server_output_tokens": "server-counted",
    "output_throughput": "out tok/s",
    "exact_output_throughput": "out tok/s (exact count)",
    "request_throughput": "req/s",
    "ttft_p50_ms": "TTFT p50",
    "ttft_p99_ms": "TTFT p99",
    "tpot_p50_ms": "TPOT p50",
    "tpot_p99_ms": "TPOT p99",
    "itl_p50_ms": "ITL p50",
    "itl_p99_ms": "ITL p99",
    "e2el_p50_ms": "E2E p50",
    "server_peak_rss_mb": "server peak RSS (MiB)",
}


def _round_tput(row: dict[str, Any]) -> float:
    """A round's figure for ranking and listing: the exact count where it is known."""
    exact = exact_throughput(row)
    return row["output_throughput"] if math.isnan(exact) else exact


def several_rounds(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether the run repeated its targets (`--rounds` > 1)."""
    return any(r.get("round", 1) > 1 for r in rows)


def median_rounds(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target, API and level: its median round (of an even number of rounds
    the slower middle one), whole, so its latencies and throughput come from one run.

    A round that did not generate what it was asked for ranks as the slowest, and makes the
    kept row not comparable (`tokens_ok` False) as well. `rounds` lists every round's
    output tok/s in the order they ran.
    """
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["api"], r["concurrency"]), []).append(r)
    kept = []
    for group in groups.values():
        ranked = sorted(group, key=lambda r: _round_tput(r) if r["tokens_ok"] else -math.inf)
        row = dict(ranked[(len(ranked) - 1) // 2])
        row["tokens_ok"] = all(r["tokens_ok"] for r in group)
        row["rounds"] = ", ".join(f"{_round_tput(r):.1f}" for r in group)
        kept.append(row)
    return kept


def table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per target, API and level (its median round); leaflm's output-throughput
    ratio at each (on exact token counts: NaN where a run is not comparable)."""
    if not rows:
        return pd.DataFrame(columns=[*COLUMNS.values(), "ignore_eos ok", "leaflm out-tok ratio"])
    several = several_rounds(rows)
    rows = median_rounds(rows)
    frame = pd.DataFrame(rows)
    frame["exact_output_throughput"] = [exact_throughput(r) for r in rows]
    leaf = {(r["api"], r["concurrency"]): exact_throughput(r) for r in rows
            if r["target"] == "leaflm"}  # fmt: skip
    frame["leaflm out-tok ratio"] = [
        leaf[(a, c)] / t if (a, c) in leaf and t > 0 else math.nan
        for a, c, t in zip(
            frame["api"], frame["concurrency"], frame["exact_output_throughput"], strict=True
        )
    ]
    frame["ignore_eos ok"] = ["yes" if ok else "NO" for ok in frame["tokens_ok"]]
    keep = [c for c in COLUMNS if c in frame.columns]
    extra = ["ignore_eos ok", "leaflm out-tok ratio", *(["rounds"] if several else [])]
    out = frame[[*keep, *extra]].rename(columns={**COLUMNS, "rounds": "rounds (out tok/s)"})
    return out.sort_values(["api", "users", "target"], kind="stable").reset_index(drop=True)


def token_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A line for every run that did not generate exactly the tokens asked for, and for
    every llama-server run whose count vLLM's client could not take from the usage."""
    several = several_rounds(rows)

    def where(r: dict[str, Any]) -> str:
        nth = f", round {r.get('round', 1)}" if several else ""
        return f"{r['target']} ({r['api']}, {r['concurrency']} users{nth})"

    notes = []
    for r in rows:
        if r["tokens_ok"]:
            continue
        short = r.get("server_short_requests", r.get("short_requests"))
        detail = f"; {short} requests ended before output_len" if short else ""
        error = f"; first error: {r['first_error']}" if r.get("first_error") else ""
        notes.append(
            f"NOT COMPARABLE: {where(r)} generated {r['total_output_tokens']} of "
            f"{r['expected_output_tokens']} tokens, {r['failed']} failed{detail}{error}"
        )
    for r in rows:
        if "server_output_tokens" not in r:
            continue
        notes.append(
            f"{where(r)}: vLLM's client counted {r['total_output_tokens']} output tokens by "
            "re-tokenizing the text (it skips the usage llama-server sends in its last "
            f"`choices` chunk); llama-server's log counts {r['server_output_tokens']} tokens "
            f"in {r['server_requests']} requests (warm-ups included), "
            f"{r['server_short_requests']} of them shorter than output_len"
        )
    return notes


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write the CSV, JSON, plot and report.md for one `vllm-serve` run; returns report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = results.get("rows", [])
    frame = table(rows)
    frame.to_csv(out / "vllm_bench.csv", index=False)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    cfg = results.get("config", {})
    lines = [f"# {results.get('title', 'serving measured with vllm bench serve')}", ""]
    if results.get("created"):
        lines += [f"Run {results['created']}.", ""]
    lines += [
        "Every figure is vLLM's own `vllm bench serve` (random dataset, fixed seed, greedy, "
        "`--ignore-eos`) against a fresh managed server per target, stopped before the next "
        "one starts. Latencies in ms.",
        "",
    ]
    if several_rounds(rows):
        lines += [
            "Rounds interleave (every target once, then again); each row is that target's "
            "median round (of an even number the slower middle one), whole; `rounds` lists "
            "every round's output tok/s in the order they ran.",
            "",
        ]
    if results.get("command"):
        lines += ["```", results["command"], "```", ""]
    if cfg:
        lines += [", ".join(f"{k}: {v}" for k, v in cfg.items()), ""]
    machine = results.get("machine") or {}
    if machine:
        lines += ["Machine: " + ", ".join(f"{k}: {v}" for k, v in machine.items()), ""]
    lines += [markdown_table(frame), ""]
    if rows:
        plots.vllm_bench_bars(median_rounds(rows), out / "vllm_bench.png")
        lines += ["![vllm bench serve](vllm_bench.png)", ""]
    notes = [*results.get("notes", []), *token_notes(rows)]
    notes += [f"problem: {p}" for p in results.get("problems", [])]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
