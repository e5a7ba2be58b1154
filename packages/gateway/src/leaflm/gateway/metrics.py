"""Prometheus metrics: engine state read at scrape time, request latencies as they happen.

Each app owns a fresh `CollectorRegistry`, so several servers can live in one process
(tests, benchmarks). Engine gauges and counters come from `engine.stats()` when /metrics is
scraped; latency histograms are observed by the gateway from the token deltas it streams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "leaflm:"
_LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip


class _EngineCollector(Collector):
    """Turns one `EngineStats` snapshot into gauges and counters at scrape time."""

    def __init__(self, stats: Callable[[], Any | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        stats = self._stats()
        if stats is None:
            return
        used = stats.num_blocks_total - stats.num_blocks_free
        gauges = {
            "num_requests_running": ("Requests running in the engine.", stats.num_running),
            "num_requests_waiting": ("Requests waiting to be scheduled.", stats.num_waiting),
            "num_requests_swapped": ("Requests swapped out to CPU memory.", stats.num_swapped),
            "kv_cache_blocks_used": ("KV-cache blocks in use.", used),
            "kv_cache_blocks_total": ("KV-cache blocks in the pool.", stats.num_blocks_total),
            "kv_cache_usage_perc": (
                "Fraction of KV-cache blocks in use.",
                used / stats.num_blocks_total if stats.num_blocks_total else 0.0,
            ),
            "prefix_cache_hit_rate": (
                "Prefix-cache hit rate (cached / queried prompt tokens).",
                stats.prefix_cache_hit_rate,
            ),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(PREFIX + name, doc, value=float(value))
        yield CounterMetricFamily(
            PREFIX + "prompt_tokens", "Prompt tokens processed.", value=stats.prompt_tokens_total
        )
        yield CounterMetricFamily(
            PREFIX + "generation_tokens",
            "Tokens generated.",
            value=stats.generation_tokens_total,
        )


class Metrics:
    """The registry of one gateway and the handles the request path updates."""

    def __init__(self, stats: Callable[[], Any | None]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(stats))
        r = self.registry
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Time between consecutive generated tokens of one completion.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "Time from request arrival to its last token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            PREFIX + "request_success",
            "Finished requests by finish reason.",
            ["finished_reason"],
            registry=r,
        )
        self.rejected = Counter(
            PREFIX + "request_rejected",
            "Requests refused before reaching the engine, by HTTP status.",
            ["status"],
            registry=r,
        )
        self.in_flight = Gauge(
            PREFIX + "gateway_requests_in_flight",
            "Generation requests the gateway holds (running or queued).",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timer(self) -> RequestTimer:
        return RequestTimer(self)


class RequestTimer:
    """Observes TTFT, inter-token latency and E2E latency for one request."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._start = time.monotonic()
        self._last: float | None = None

    def tokens(self, count: int) -> None:
        """Record `count` new tokens arriving now (spread evenly since the last arrival)."""
        if count <= 0:
            return
        now = time.monotonic()
        if self._last is None:
            self._metrics.ttft.observe(now - self._start)
            count -= 1
        else:
            gap = (now - self._last) / count
            for _ in range(count):
                self._metrics.itl.observe(gap)
        self._last = now

    def finish(self, reasons: list[str]) -> None:
        self._metrics.e2e.observe(time.monotonic() - self._start)
        for reason in reasons:
            self._metrics.requests.labels(finished_reason=reason).inc()
