"""The report's figures (matplotlib, Agg): one function per PNG, each returns its path.

Figures are sized for a markdown page (about 1000 px wide), with the numbers written on
the bars and a legend outside the data, so they read without the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from leaflm.bench.metrics import OfflineResult

# leaflm's backends in greens that stay apart (int8 light, gguf teal); the peers in warm
# colours. Names not listed take matplotlib's cycle without its green (C2), which read as
# leaflm's.
_COLORS = {"leaflm": "#2e7d32", "leaflm-int8": "#81c784", "leaflm-gguf": "#00897b",
           "hf-single": "#9e9e9e", "hf-static": "#1565c0", "hf-cb": "#6a1b9a",
           "hf-serve": "#1565c0", "hf-serve-cb": "#6a1b9a", "naive": "#9e9e9e",
           "vllm-cpu": "#ef6c00", "llama-cpp": "#c62828", "llama-cpp-q4": "#8d6e63"}  # fmt: skip
_CYCLE = [f"C{i}" for i in range(10) if i != 2]


def _plain_numbers(axis: Any) -> None:
    """Log axes labelled 200, 500, 1000 rather than 2x10^2; call after plotting.

    Minor ticks get labels only when the axis spans less than ~1.5 decades, else they crowd.
    """
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
    lo, hi = axis.get_view_interval()
    if lo > 0 and hi / lo < 5:
        axis.set_minor_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
    elif lo > 0 and hi / lo < 30:
        minor = ticker.FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:g}"[0] in "25" else "")
        axis.set_minor_formatter(minor)
    else:
        axis.set_minor_formatter(ticker.NullFormatter())


def _color(name: str, index: int) -> str:
    return _COLORS.get(name, _CYCLE[index % len(_CYCLE)])


def offline_bars(results: Sequence[OfflineResult], path: Path) -> Path:
    """Output tokens/s per offline backend, each bar labelled with leaflm's speed-up over it."""
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    names = [r.backend for r in results]
    values = [r.output_tok_per_s for r in results]
    ref = next((r.output_tok_per_s for r in results if r.backend == "leaflm"), None)
    bars = ax.bar(names, values, color=[_color(n, i) for i, n in enumerate(names)])
    for bar, result in zip(bars, results, strict=True):
        label = f"{result.output_tok_per_s:.1f}"
        if ref and result.backend != "leaflm" and result.output_tok_per_s > 0:
            label += f"\nleaflm {ref / result.output_tok_per_s:.1f}×"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9, xytext=(0, 2),
                    textcoords="offset points")  # fmt: skip
    ax.set_ylabel("output tokens / s")
    ax.set_title("Offline throughput (same model, prompts and machine)")
    ax.set_ylim(0, max(values, default=1) * 1.3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _by_target(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["target"], []).append(row)
    return {k: sorted(v, key=lambda r: r["concurrency"]) for k, v in grouped.items()}


def _concurrency_axis(ax: Any, rows: Sequence[dict[str, Any]]) -> None:
    levels = sorted({r["concurrency"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(x) for x in levels])
    ax.set_xlabel("concurrent users")
    ax.grid(alpha=0.3)


def throughput_vs_concurrency(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Output tokens/s and requests/s against concurrency, one line per target."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for i, (target, series) in enumerate(_by_target(rows).items()):
        x = [r["concurrency"] for r in series]
        for ax, key in zip(axes, ("output_throughput", "request_throughput"), strict=True):
            ax.plot(x, [r[key] for r in series], marker="o", label=target, color=_color(target, i))
    axes[0].set_ylabel("output tokens / s")
    axes[1].set_ylabel("requests / s")
    for ax in axes:
        _concurrency_axis(ax, rows)
        ax.set_ylim(bottom=0)
    axes[0].legend(loc="upper left", fontsize=9)
    fig.suptitle("Serving throughput vs concurrency (streaming OpenAI clients)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def latency_vs_concurrency(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """TTFT, TPOT and E2E p50 (solid) and p99 (dashed) against concurrency, log scale."""
    metrics = (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E latency"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), dpi=110)
    for i, (target, series) in enumerate(_by_target(rows).items()):
        x = [r["concurrency"] for r in series]
        for ax, (key, _title) in zip(axes, metrics, strict=True):
            color = _color(target, i)
            ax.plot(x, [r[f"{key}_p50_ms"] for r in series], marker="o", color=color,
                    label=f"{target} p50")  # fmt: skip
            ax.plot(x, [r[f"{key}_p99_ms"] for r in series], marker="x", color=color,
                    linestyle="--", alpha=0.7, label=f"{target} p99")  # fmt: skip
    for ax, (_key, title) in zip(axes, metrics, strict=True):
        _concurrency_axis(ax, rows)
        ax.set_yscale("log")
        _plain_numbers(ax.yaxis)
        ax.set_title(title)
        ax.set_ylabel("ms")
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Latency percentiles vs concurrency (p50 solid, p99 dashed)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def ttft_cdf(raw: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> Path:
    """Empirical CDF of TTFT per target, one panel per concurrency level."""
    levels = sorted({int(level) for per_target in raw.values() for level in per_target})
    fig, axes = plt.subplots(1, max(len(levels), 1), figsize=(4.2 * max(len(levels), 1), 4),
                             dpi=110, squeeze=False)  # fmt: skip
    for ax, level in zip(axes[0], levels, strict=False):
        for i, (target, per_level) in enumerate(raw.items()):
            ttfts = sorted(
                r["ttft"] * 1000 for r in per_level.get(str(level), []) if r.get("ttft") is not None
            )
            if not ttfts:
                continue
            y = np.arange(1, len(ttfts) + 1) / len(ttfts)
            ax.step(ttfts, y, where="post", label=target, color=_color(target, i))
        ax.set_xscale("log")
        _plain_numbers(ax.xaxis)
        ax.set_title(f"{level} users")
        ax.set_xlabel("TTFT (ms, log)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of requests")
    axes[0][0].legend(fontsize=9, loc="lower right")
    fig.suptitle("Time to first token, CDF")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def vllm_bench_bars(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """`vllm bench serve` results: output tok/s and p50 TTFT per run, grouped by target.

    Each bar is one API and concurrency level; a run that did not generate the tokens it was
    asked for (it ignored `ignore_eos`) is hatched and marked "not comparable".
    """
    from leaflm.bench.vllm_bench import exact_throughput

    runs = sorted({(r["api"], r["concurrency"]) for r in rows}, key=lambda k: (k[0], k[1]))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    by_key = {(r["target"], r["api"], r["concurrency"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(targets))
    for ax, key, unit in ((axes[0], "output_throughput", "output tokens / s"),
                          (axes[1], "ttft_p50_ms", "p50 TTFT (ms)")):  # fmt: skip
        top = 1.0
        for j, (api, users) in enumerate(runs):
            for i, target in enumerate(targets):
                row = by_key.get((target, api, users))
                if row is None:
                    continue
                value = row[key]
                if key == "output_throughput" and row["tokens_ok"]:
                    value = exact_throughput(row)  # the exact count, not a re-tokenization
                top = max(top, value)
                bar = ax.bar(x[i] + (j - (len(runs) - 1) / 2) * width, value, width * 0.95,
                             color=f"C{j % 10}", hatch="" if row["tokens_ok"] else "//",
                             label=f"{api}, {users} users" if i == 0 else None)[0]  # fmt: skip
                label = f"{value:.0f}" + ("" if row["tokens_ok"] else "\nnot comparable")
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, value), ha="center",
                            va="bottom", fontsize=8, xytext=(0, 2),
                            textcoords="offset points")  # fmt: skip
        ax.set_xticks(x, targets, rotation=15)
        ax.set_ylabel(unit)
        ax.set_ylim(0, top * 1.3)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("output throughput (higher is better)")
    axes[1].set_title("time to first token (lower is better)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Serving measured with vLLM's `vllm bench serve` (streaming, ignore_eos)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
