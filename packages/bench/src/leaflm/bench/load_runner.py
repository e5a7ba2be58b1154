"""The Locust side of a serving run: `python -m leaflm.bench.load_runner JOB.json OUT.json`.

Runs in its own process, apart from the server and from the bench orchestrator, because
Locust monkey-patches the standard library with gevent on import. Headless and programmatic:
a `locust.env.Environment` with N streaming users sharing one bounded queue of requests.
Each user takes the next request, waits for its scheduled arrival (none for a fixed-
concurrency run), streams it, and fires Locust request events for the whole response
("e2e"), the first token ("ttft") and the mean inter-token gap ("itl") — Locust's own timer
stops at the response headers, so these custom events are the ones that mean something.
The run stops when every request is done or at the time limit, whichever comes first.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, ClassVar

import gevent
import locust  # monkey-patches the stdlib with gevent: must precede requests/urllib3
import requests
from locust import User, constant
from locust.env import Environment
from locust.exception import StopUser

from leaflm.bench.metrics import RequestRecord
from leaflm.bench.sse import Target, build_payload, stream_request


class _Plan:
    """The shared request queue and results of one run (one Locust process = one run)."""

    target: Target
    jobs: ClassVar[list[dict[str, Any]]] = []
    next_index = 0
    t0 = 0.0
    records: ClassVar[list[RequestRecord | None]] = []

    @classmethod
    def take(cls) -> int | None:
        if cls.next_index >= len(cls.jobs):
            return None
        index = cls.next_index
        cls.next_index += 1
        return index


class StreamingUser(User):
    """One concurrent client: streams requests back to back until the queue is empty."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.session = requests.Session()

    def on_stop(self) -> None:
        self.session.close()

    @locust.task
    def generate(self) -> None:
        index = _Plan.take()
        if index is None:
            raise StopUser()
        job = _Plan.jobs[index]
        delay = _Plan.t0 + job.get("arrival", 0.0) - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        target = _Plan.target
        payload = build_payload(target, job["prompt"], job["max_tokens"], job.get("messages"))
        record = stream_request(self.session, target, payload, job.get("prompt_tokens", 0))
        _Plan.records[index] = record
        fire = self.environment.events.request.fire
        exc = RuntimeError(record.error) if not record.success else None
        fire(
            request_type="STREAM",
            name="e2e",
            response_time=record.e2e * 1000,
            response_length=record.output_tokens,
            exception=exc,
            context={},
        )
        if record.success and record.ttft is not None:
            fire(
                request_type="STREAM",
                name="ttft",
                response_time=record.ttft * 1000,
                response_length=0,
                exception=None,
                context={},
            )
        if record.itl:
            fire(
                request_type="STREAM",
                name="itl",
                response_time=sum(record.itl) / len(record.itl) * 1000,
                response_length=0,
                exception=None,
                context={},
            )


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Run one bounded load test; returns records, wall time and Locust's own stats."""
    _Plan.target = Target(**job["target"])
    _Plan.jobs = job["requests"]
    _Plan.next_index = 0
    _Plan.records = [None] * len(_Plan.jobs)
    users = int(job["users"])
    time_limit = float(job.get("time_limit", 600))
    env = Environment(user_classes=[StreamingUser], host=_Plan.target.base_url)
    runner = env.create_local_runner()
    _Plan.t0 = time.perf_counter()
    runner.start(users, spawn_rate=max(users, 1))
    deadline = _Plan.t0 + time_limit
    timed_out = False
    while sum(r is not None for r in _Plan.records) < len(_Plan.jobs):
        if time.perf_counter() > deadline:
            timed_out = True
            break
        gevent.sleep(0.05)
    done = [r for r in _Plan.records if r is not None]
    wall = (max(r.end for r in done) if done else time.perf_counter()) - _Plan.t0
    runner.quit()
    stats = {
        name: {
            "num_requests": entry.num_requests,
            "num_failures": entry.num_failures,
            "avg_ms": entry.avg_response_time,
            "median_ms": entry.median_response_time,
        }
        for (name, _method), entry in env.stats.entries.items()
    }
    return {
        "records": [r.to_dict() for r in done],
        "duration_s": wall,
        "planned": len(_Plan.jobs),
        "timed_out": timed_out,
        "locust_stats": stats,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m leaflm.bench.load_runner JOB.json OUT.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    result = run(job)
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
