"""The soak's verdict: named checks over its request records and server samples.

Kept apart from the load so the rules can be tested on planted data. A check passes only
on evidence: no RSS samples, or no KV-block gauge in /metrics, is a failure, not a pass.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from leaflm.bench.soak import FAILURES

_BUSY = ("num_requests_running", "num_requests_waiting", "num_requests_swapped",
         "gateway_requests_in_flight")  # fmt: skip


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _examples(records: list[dict[str, Any]], outcome: str, limit: int = 3) -> str:
    picked = [r for r in records if r["outcome"] == outcome][:limit]
    return "; ".join(f"{r['path']} {r['status']}: {r['detail'][:120]}" for r in picked)


def rss_growth(samples: list[dict[str, Any]], load_end: float) -> dict[str, float] | None:
    """Peak RSS of the load's last quarter minus that of its first quarter (MB).

    Comparing windows that carry the same load discounts the one-off warm-up growth
    (allocator pools, first-seen shapes) and the momentary peaks of long prompts, and
    leaves what keeps growing with the number of requests served.
    """
    during = [s for s in samples if s["rss_mb"] is not None and s["t"] <= load_end]
    if len(during) < 4:
        return None
    start = during[0]["t"]
    quarter = (load_end - start) / 4
    early = [s["rss_mb"] for s in during if s["t"] <= start + quarter]
    late = [s["rss_mb"] for s in during if s["t"] >= load_end - quarter]
    if not early or not late:
        return None
    after = [s["rss_mb"] for s in samples if s["rss_mb"] is not None and s["t"] > load_end]
    return {
        "idle_start_mb": during[0]["rss_mb"],
        "early_peak_mb": max(early),
        "late_peak_mb": max(late),
        "peak_mb": max(s["rss_mb"] for s in during),
        "after_drain_mb": after[-1] if after else during[-1]["rss_mb"],
        "growth_mb": max(late) - max(early),
    }


def evaluate(raw: dict[str, Any], max_rss_growth_mb: float) -> list[dict[str, Any]]:
    """Every check of one soak run (`soak.run_soak`'s result); the run passes if all pass."""
    records, samples = raw["records"], raw["samples"]
    outcomes = Counter(r["outcome"] for r in records)
    done = f"{outcomes['ok']} streams read to the end of {len(records)} requests"
    five = f"{outcomes['server_error']} answered 5xx. {_examples(records, 'server_error')}"
    hung = f"{outcomes['hang']} requests hung. {_examples(records, 'hang')}"
    checks = [
        _check("requests completed", outcomes["ok"] > 0, done),
        _check("no 5xx", outcomes["server_error"] == 0, five.strip()),
        _check("no hang", outcomes["hang"] == 0, hung.strip()),
    ]
    others = {k: outcomes[k] for k in FAILURES if k not in ("server_error", "hang") and outcomes[k]}
    detail = ", ".join(f"{v} {k}" for k, v in others.items()) or "none"
    examples = " ".join(_examples(records, k) for k in others)
    checks.append(_check("no other failures", not others, f"{detail}. {examples}".strip()))
    unreadable = [s["error"] for s in samples if "not readable" in s["error"]]
    growth = rss_growth(samples, raw["load_end_s"] or 0.0)
    if unreadable:
        checks.append(_check("RSS bounded", False, unreadable[0]))
    elif growth is None:
        checks.append(_check("RSS bounded", False, "too few RSS samples to judge (give --pid)"))
    else:
        checks.append(_check(
            "RSS bounded", growth["growth_mb"] <= max_rss_growth_mb,
            f"late-load peak {growth['late_peak_mb']:.0f} MB − early-load peak "
            f"{growth['early_peak_mb']:.0f} MB = {growth['growth_mb']:+.0f} MB "
            f"(bound {max_rss_growth_mb:g} MB); peak {growth['peak_mb']:.0f} MB, "
            f"after drain {growth['after_drain_mb']:.0f} MB",
        ))  # fmt: skip
    last: dict[str, float] = next((s["gauges"] for s in reversed(samples) if s["gauges"]), {})
    used = last.get("kv_cache_blocks_used")
    if used is None:
        checks.append(
            _check("KV blocks freed", False, "/metrics has no leaflm:kv_cache_blocks_used")
        )
    else:
        busy = {k: last[k] for k in _BUSY if last.get(k)}
        ok = used == 0 and not busy
        where = f"; still busy: {busy}" if busy else ""
        when = raw.get("drained_at_s")
        after = (
            f"drained {when - raw['load_end_s']:.1f} s after the load" if when else "never drained"
        )
        checks.append(
            _check("KV blocks freed", ok, f"{used:g} blocks in use at the end{where}; {after}")
        )
    probe = raw.get("final_probe", "")
    checks.append(
        _check("server healthy afterwards", not probe, probe or "health and a completion OK")
    )
    return checks


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    """Counts by kind and outcome, and request rates, for the report."""
    records = raw["records"]
    by_kind: dict[str, Counter] = {}
    by_route: Counter = Counter()
    for r in records:
        by_kind.setdefault(r["kind"], Counter())[r["outcome"]] += 1
        by_route[f"{r['path']} {r['status']}"] += 1
    duration = raw["load_end_s"] or 0.0
    chunks = sum(r["chunks"] for r in records)
    latencies = sorted(r["end"] - r["start"] for r in records if r["outcome"] == "ok")
    return {
        "requests": len(records),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "by_route": dict(sorted(by_route.items())),
        "load_seconds": duration,
        "requests_per_s": len(records) / duration if duration else 0.0,
        "stream_chunks": chunks,
        "ok_latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
        "ok_latency_max_s": latencies[-1] if latencies else None,
    }
