"""The CPU race's targets (leaflm against vLLM-CPU and llama.cpp), checked on a report's results.

The same shape as the HF targets in `leaflm.bench.report`: each is met, MISSED or not
measured, from whatever backends and serving targets the run had. Batch-1 decode is measured
by packages/engine/benchmarks/decode_batch1.py, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from leaflm.bench.checks import Check, ratio_check
from leaflm.bench.metrics import OfflineResult
from leaflm.bench.peers import PEER_BACKENDS, PEER_TARGETS

# (leaflm backend, need, baselines: the best of them is the bar)
OFFLINE_PEER_TARGETS: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("leaflm", 1.3, ("vllm-cpu",)),
    ("leaflm-int8", 2.5, ("vllm-cpu",)),
    ("leaflm-int8-kv16", 2.5, ("vllm-cpu",)),  # int8 with a float16 KV cache
    ("leaflm-gguf", 1.5, ("llama-cpp", "llama-cpp-q4")),
)
SERVING_PEER_LEVEL = 16
SERVING_PEER_TARGETS: tuple[tuple[str, float, str], ...] = (
    ("leaflm", 1.3, "vllm-cpu"),
    ("leaflm", 1.3, "llama-cpp"),
)


def has_peers(offline: Sequence[OfflineResult], serving: Sequence[dict[str, Any]]) -> bool:
    return any(r.backend in PEER_BACKENDS for r in offline) or any(
        r["target"] in PEER_TARGETS for r in serving
    )


def paired_ratios(ours: OfflineResult, bases: Sequence[OfflineResult]) -> list[float]:
    """leaflm's output tok/s over the best baseline's, round by round, where every backend ran
    the same number (>= 2) of interleaved rounds: a slow stretch of a shared machine then
    lands on both sides of one ratio, where each side's median round may come from
    different stretches (one report read 2.57x from rounds of 1.94x and 3.33x)."""
    n = len(ours.trials)
    if n < 2 or any(len(b.trials) != n for b in bases):
        return []
    return [ours.trials[i] / max(b.trials[i] for b in bases) for i in range(n)]


def check_peer_targets(
    offline: Sequence[OfflineResult], serving: Sequence[dict[str, Any]]
) -> list[Check]:
    """Offline output tok/s ratios (the median of the paired per-round ratios when the
    backends ran several rounds, the lower middle one of an even count), then serving
    throughput and p50 TTFT at 16 users."""
    checks = []
    by_name = {r.backend: r for r in offline}
    for ours_name, need, bases in OFFLINE_PEER_TARGETS:
        name = f"offline {ours_name} vs {' / '.join(bases)}"
        required = f"{ours_name} output tok/s ≥ {need:g}× " + (
            bases[0] if len(bases) == 1 else f"the best of {', '.join(bases)}"
        )
        ours = by_name.get(ours_name)
        measured = [by_name[b] for b in bases if b in by_name and by_name[b].output_tok_per_s > 0]
        if ours is None or not measured:
            checks.append(Check(name, required, "—", "not measured"))
            continue
        best = max(measured, key=lambda r: r.output_tok_per_s)
        per_round = paired_ratios(ours, measured)
        if per_round:
            ratio = sorted(per_round)[(len(per_round) - 1) // 2]
            listed = ", ".join(f"{r:.2f}" for r in per_round)
            measured_as = f"{ratio:.2f}× median of paired rounds ({listed}×)"
            check = Check(name, required, measured_as, "met" if ratio >= need else "MISSED")
        else:
            check = ratio_check(name, required, ours.output_tok_per_s, best.output_tok_per_s, need)
        if len(bases) > 1:
            check.measured += f", best: {best.backend}"
        checks.append(check)
    level = SERVING_PEER_LEVEL
    rows = {(r["target"], r["concurrency"]): r for r in serving}
    for ours_name, need, base in SERVING_PEER_TARGETS:
        name = f"serving @{level} users vs {base}"
        req_tp, req_ttft = f"{ours_name} output tok/s ≥ {need:g}× {base}", f"p50 TTFT < {base}"
        ours, theirs = rows.get((ours_name, level)), rows.get((base, level))
        if ours is None or theirs is None or not theirs["output_throughput"] > 0:
            checks.append(Check(name, req_tp, "—", "not measured"))
            checks.append(Check(f"{name}, TTFT", req_ttft, "—", "not measured"))
            continue
        tp_ours, tp_theirs = ours["output_throughput"], theirs["output_throughput"]
        checks.append(ratio_check(name, req_tp, tp_ours, tp_theirs, need))
        a, b = ours["ttft_p50_ms"], theirs["ttft_p50_ms"]
        status = "met" if a < b else "MISSED"
        checks.append(Check(f"{name}, TTFT", req_ttft, f"{a:.0f} ms vs {b:.0f} ms", status))
    return checks
