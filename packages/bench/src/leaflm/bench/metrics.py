"""Serving and offline metrics, defined as `vllm bench serve` defines them.

Per request (from one streamed response): TTFT = first token - send; E2E = last byte - send;
TPOT = (E2E - TTFT) / (output tokens - 1); ITLs = gaps between consecutive streamed chunks.
Per run: mean/median/p90/p99 of each, request and output-token throughput over the run's
wall time, and goodput = requests per second that met every SLO.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """What one client saw of one request; times are seconds from the client's clock."""

    start: float
    end: float
    success: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(**data)


def parse_slo(text: str | None) -> dict[str, float]:
    """Parse `ttft:500,tpot:100` (milliseconds) into `{"ttft": 0.5, "tpot": 0.1}` seconds."""
    if not text:
        return {}
    slo: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition(":")
        key = key.strip().lower()
        if not sep or key not in ("ttft", "tpot", "e2e", "itl"):
            raise ValueError(
                f"bad SLO {part!r}: expected METRIC:MS with METRIC in ttft,tpot,itl,e2e"
            )
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(
                f"bad SLO {part!r}: {value!r} is not a number of milliseconds"
            ) from None
        if ms <= 0:
            raise ValueError(f"bad SLO {part!r}: milliseconds must be > 0")
        slo[key] = ms / 1000.0
    return slo


def meets_slo(record: RequestRecord, slo: dict[str, float]) -> bool:
    """True if a successful request is within every given SLO (an ITL SLO bounds each gap)."""
    if not record.success:
        return False
    values = {"ttft": record.ttft, "tpot": record.tpot, "e2e": record.e2e}
    for key, limit in slo.items():
        if key == "itl":
            if any(gap > limit for gap in record.itl):
                return False
            continue
        value = values[key]
        if key == "tpot" and value is None:  # single-token outputs have no TPOT to miss
            continue
        if value is None or value > limit:
            return False
    return True


def distribution(values: Sequence[float], prefix: str) -> dict[str, float]:
    """mean/p50/p90/p99 (numpy's linear percentiles) in milliseconds, NaN when empty."""
    out: dict[str, float] = {}
    arr = np.asarray(values, dtype=float)
    out[f"{prefix}_mean_ms"] = float(arr.mean() * 1000) if arr.size else float("nan")
    for p in PERCENTILES:
        out[f"{prefix}_p{p}_ms"] = float(np.percentile(arr, p) * 1000) if arr.size else float("nan")
    return out


def summarize(
    records: Iterable[RequestRecord],
    duration: float | None = None,
    slo: dict[str, float] | None = None,
) -> dict[str, float]:
    """Aggregate one run. `duration` defaults to first send to last finish."""
    records = list(records)
    ok = [r for r in records if r.success]
    if duration is None:
        duration = (max(r.end for r in records) - min(r.start for r in records)) if records else 0.0
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    result: dict[str, float] = {
        "requests": len(records),
        "completed": len(ok),
        "failures": len(records) - len(ok),
        "duration_s": duration,
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration > 0 else float("nan"),
        "output_throughput": out_tokens / duration if duration > 0 else float("nan"),
        "total_token_throughput": (in_tokens + out_tokens) / duration
        if duration > 0
        else float("nan"),
    }
    result.update(distribution([r.ttft for r in ok if r.ttft is not None], "ttft"))
    result.update(distribution([t for r in ok if (t := r.tpot) is not None], "tpot"))
    result.update(distribution([gap for r in ok for gap in r.itl], "itl"))
    result.update(distribution([r.e2e for r in ok], "e2e"))
    if slo:
        good = sum(1 for r in ok if meets_slo(r, slo))
        result["good_requests"] = good
        result["goodput"] = good / duration if duration > 0 else float("nan")
    return result


@dataclass
class OfflineResult:
    """One offline backend's run over (a subset of) the workload."""

    backend: str
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    elapsed_s: float
    peak_memory_mb: float
    note: str = ""
    trials: list[float] = field(default_factory=list)  # output tok/s of every round, if repeated

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.elapsed_s

    @property
    def output_tok_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s

    @property
    def total_tok_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.elapsed_s

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            requests_per_s=self.requests_per_s,
            output_tok_per_s=self.output_tok_per_s,
            total_tok_per_s=self.total_tok_per_s,
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OfflineResult:
        keys = ("backend", "num_requests", "prompt_tokens", "output_tokens", "elapsed_s")
        return cls(
            **{k: data[k] for k in keys},
            peak_memory_mb=data.get("peak_memory_mb", float("nan")),
            note=data.get("note", ""),
            trials=list(data.get("trials", [])),
        )
