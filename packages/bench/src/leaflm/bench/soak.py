"""The soak load: concurrent streaming clients with random lengths, disconnects and bad input.

Each of `concurrency` asyncio workers sends one request at a time until the duration or the
request count is spent. A request is a valid stream read to the end, a valid stream the
client abandons after a random number of chunks (a mid-stream disconnect; 0 chunks is a
disconnect while the request is still queued or prefilling), or an invalid request that
must be refused with a 4xx. Every request has a hard deadline, so a hung stream is recorded
as a hang rather than stalling the run. A sampler task records the server's RSS and its
Prometheus gauges meanwhile; `soak_check` turns the records and samples into a verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

METRIC_PREFIX = "leaflm:"
GAUGES = (
    "kv_cache_blocks_used",
    "kv_cache_blocks_total",
    "num_requests_running",
    "num_requests_waiting",
    "num_requests_swapped",
    "gateway_requests_in_flight",
)
# Outcomes that fail the soak: a 5xx, a hang, a refused valid request or an accepted
# invalid one, a dropped connection, an error event inside a stream, a stream cut short.
FAILURES = ("server_error", "hang", "unexpected_status", "transport_error", "stream_error",
            "incomplete")  # fmt: skip
_WORDS = (
    "leaf tree river stone cloud light green autumn branch root forest rain wind soil seed "
    "flower summer winter morning evening mountain valley bird song quiet bright small old"
).split()


def invalid_cases(model: str) -> list[tuple[str, dict[str, Any] | bytes]]:
    """(path, body) pairs every server must refuse with a 4xx, at once and without harm.

    Besides plain mistakes these include the hostile ones: absurd `n`/`best_of` (a server
    that forks them runs out of memory), NaN, booleans where numbers or token ids belong.
    """
    c, ch, tgi = "/v1/completions", "/v1/chat/completions", "/generate"
    base = {"model": model, "prompt": "a leaf", "max_tokens": 4, "stream": True}
    msgs = [{"role": "user", "content": "hi"}]
    nan = f'{{"model": {json.dumps(model)}, "prompt": "a leaf", "temperature": NaN}}'
    return [
        (c, {**base, "max_tokens": -3}),
        (c, {**base, "max_tokens": "many"}),
        (c, {**base, "max_tokens": 10**9}),
        (c, {**base, "temperature": -0.5}),
        (c, {**base, "temperature": True}),
        (c, {**base, "top_p": 0}),
        (c, {**base, "n": 0}),
        (c, {**base, "n": 10**9, "stream": False}),
        (c, {**base, "best_of": 2**63 - 1, "max_tokens": 1, "stream": False}),
        (c, {**base, "prompt": ""}),
        (c, {**base, "prompt": [1, 2, 10**9]}),
        (c, {**base, "prompt": [[False]]}),
        (c, {**base, "model": "no-such-model"}),
        (c, {"model": model, "max_tokens": 4}),
        (c, nan.encode()),
        (c, b'{"prompt": "a leaf", '),
        (c, b"not json"),
        (ch, {"model": model, "messages": [], "stream": True}),
        (ch, {"model": model, "messages": "hello", "stream": True}),
        (ch, {"model": model, "messages": msgs, "presence_penalty": 5, "stream": True}),
        (tgi + "_stream", {"inputs": "a leaf", "parameters": {"max_new_tokens": 0}}),
        (tgi, {"inputs": "a leaf", "parameters": {"best_of": 10_000, "do_sample": True}}),
    ]


@dataclass
class SoakConfig:
    """What one soak run does; every field is bounded so the run stops by itself."""

    url: str
    pid: int | None = None
    duration_s: float = 60.0
    concurrency: int = 8
    max_requests: int = 100_000
    request_timeout_s: float = 120.0
    max_prompt_words: int = 200
    max_output_tokens: int = 64
    disconnect_share: float = 0.2
    invalid_share: float = 0.1
    sample_interval_s: float = 1.0
    drain_timeout_s: float = 60.0
    max_rss_growth_mb: float = 256.0
    seed: int = 0
    api_key: str | None = None

    def __post_init__(self) -> None:
        host = httpx.URL(self.url).host
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"soak only targets 127.0.0.1 or localhost, got host {host!r}")
        for name in ("duration_s", "request_timeout_s", "sample_interval_s", "drain_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("concurrency", "max_requests", "max_prompt_words", "max_output_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        share = self.disconnect_share + self.invalid_share
        if min(self.disconnect_share, self.invalid_share) < 0 or share > 1:
            raise ValueError("disconnect_share and invalid_share must be >= 0 and sum to <= 1")


@dataclass
class SoakRecord:
    """One request: what was sent and how it ended (`outcome`; see FAILURES)."""

    kind: str  # "stream", "disconnect" or "invalid"
    path: str
    start: float
    end: float = 0.0
    status: int | None = None
    outcome: str = ""
    chunks: int = 0
    detail: str = ""


@dataclass
class Sample:
    """One look at the server: its RSS, its gauges, and the client's requests in flight."""

    t: float
    rss_mb: float | None
    client_in_flight: int
    gauges: dict[str, float] = field(default_factory=dict)
    error: str = ""


def process_rss_mb(pid: int) -> float:
    """RSS of `pid` and all its children (engine workers count against the server)."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a child that just exited
            total += child.memory_info().rss
    return total / 2**20


def parse_gauges(text: str) -> dict[str, float]:
    """The leaflm gauges (GAUGES, prefix stripped) found in a Prometheus text exposition."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        name = family.name.removeprefix(METRIC_PREFIX)
        if family.name.startswith(METRIC_PREFIX) and name in GAUGES and family.samples:
            found[name] = float(family.samples[0].value)
    return found


class Soak:
    """Runs the load, the sampler and the drain for one `SoakConfig`."""

    def __init__(self, config: SoakConfig, model: str) -> None:
        self.config, self.model = config, model
        self.rng = random.Random(config.seed)
        self.records: list[SoakRecord] = []
        self.samples: list[Sample] = []
        self.in_flight = 0
        self.issued = 0
        self.t0 = time.monotonic()
        self.load_end: float | None = None
        self.drained_at: float | None = None
        self._invalid = invalid_cases(model)
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        limits = httpx.Limits(max_connections=config.concurrency + 4)
        timeout = httpx.Timeout(config.request_timeout_s, connect=10.0)
        self.client = httpx.AsyncClient(
            base_url=config.url.rstrip("/"), headers=headers, limits=limits, timeout=timeout
        )

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- requests -------------------------------------------------------------------------
    def _valid_request(self) -> tuple[str, dict[str, Any]]:
        cfg, rng = self.config, self.rng
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, cfg.max_prompt_words)))
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": rng.randint(1, cfg.max_output_tokens),
            "temperature": rng.choice([0.0, 0.7, 1.0]),
            "stream": True,
            "seed": rng.randint(0, 2**31 - 1),
        }
        if rng.random() < 0.5:
            body["ignore_eos"] = True
        api = rng.random()
        if api < 0.2:  # TGI's native stream: do_sample with a positive temperature, or greedy
            temperature = body["temperature"]
            params = {"max_new_tokens": body["max_tokens"], "seed": body["seed"],
                      "do_sample": temperature > 0, "temperature": temperature or None}  # fmt: skip
            return "/generate_stream", {"inputs": words, "parameters": params}
        if api < 0.6:
            body["messages"] = [{"role": "user", "content": words}]
            return "/v1/chat/completions", body
        body["prompt"] = words
        if rng.random() < 0.1:
            body["n"] = 2
        return "/v1/completions", body

    async def _stream(self, rec: SoakRecord, body: dict[str, Any], stop_after: int | None) -> None:
        async with self.client.stream("POST", rec.path, json=body) as response:
            rec.status = response.status_code
            if response.status_code != 200:
                rec.detail = (await response.aread()).decode("utf-8", "replace")[:300]
                rec.outcome = "server_error" if response.status_code >= 500 else "unexpected_status"
                return
            if stop_after == 0:
                rec.outcome = "disconnected"
                return
            final = False  # TGI streams end with an event carrying generated_text, no [DONE]
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    rec.outcome = "ok"
                    return
                event = json.loads(data)
                if "error" in event:
                    rec.outcome, rec.detail = "stream_error", json.dumps(event["error"])[:300]
                    return
                rec.chunks += 1
                final = final or event.get("generated_text") is not None
                if stop_after is not None and rec.chunks >= stop_after and not final:
                    rec.outcome = "disconnected"  # leaving the block closes the connection
                    return
            if final and rec.path == "/generate_stream":
                rec.outcome = "ok"
                return
            rec.outcome, rec.detail = "incomplete", "stream ended without its final event"

    async def _invalid_request(self, rec: SoakRecord, body: dict[str, Any] | bytes) -> None:
        if isinstance(body, bytes):
            headers = {"Content-Type": "application/json"}
            response = await self.client.post(rec.path, content=body, headers=headers)
        else:
            response = await self.client.post(rec.path, json=body)
        rec.status = response.status_code
        if 400 <= response.status_code < 500:
            rec.outcome = "rejected"
        else:
            rec.outcome = "server_error" if response.status_code >= 500 else "unexpected_status"
            rec.detail = f"invalid request {body!r:.200} answered {response.status_code}"

    async def one_request(self) -> SoakRecord:
        cfg, roll = self.config, self.rng.random()
        if roll < cfg.invalid_share:
            path, bad = self.rng.choice(self._invalid)
            rec = SoakRecord("invalid", path, self.now())
            work = self._invalid_request(rec, bad)
        else:
            path, body = self._valid_request()
            disconnect = roll < cfg.invalid_share + cfg.disconnect_share
            tokens = body.get("max_tokens") or body["parameters"]["max_new_tokens"]
            stop_after = self.rng.randint(0, max(tokens - 1, 0)) if disconnect else None
            rec = SoakRecord("disconnect" if disconnect else "stream", path, self.now())
            work = self._stream(rec, body, stop_after)
        self.in_flight += 1
        try:
            await asyncio.wait_for(work, cfg.request_timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            rec.outcome = "hang"
            rec.detail = f"no complete answer within {cfg.request_timeout_s:g} s"
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            rec.outcome, rec.detail = "transport_error", repr(exc)[:300]
        finally:
            self.in_flight -= 1
        rec.end = self.now()
        return rec

    async def _worker(self, deadline: float) -> None:
        while self.now() < deadline and self.issued < self.config.max_requests:
            self.issued += 1
            self.records.append(await self.one_request())

    # -- sampling ---------------------------------------------------------------------------
    async def sample(self) -> Sample:
        rss: float | None = None
        error = ""
        if self.config.pid is not None:
            try:
                rss = process_rss_mb(self.config.pid)
            except psutil.Error as exc:
                error = f"server process {self.config.pid} not readable: {exc!r}"
        gauges: dict[str, float] = {}
        try:
            response = await self.client.get("/metrics", timeout=10.0)
            response.raise_for_status()
            gauges = parse_gauges(response.text)
        except (httpx.HTTPError, ValueError) as exc:
            error = error or f"/metrics: {exc!r}"[:300]
        s = Sample(self.now(), rss, self.in_flight, gauges, error)
        self.samples.append(s)
        return s

    async def _sampler(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.sample_interval_s)

    async def _drain(self) -> None:
        """Sample until the server holds no request and no KV block, or the timeout passes."""
        deadline = self.now() + self.config.drain_timeout_s
        busy = ("kv_cache_blocks_used", "num_requests_running", "num_requests_waiting",
                "num_requests_swapped", "gateway_requests_in_flight")  # fmt: skip
        while self.now() < deadline:
            s = await self.sample()
            if s.gauges and all(s.gauges.get(k, 0.0) == 0 for k in busy):
                self.drained_at = s.t
                return
            await asyncio.sleep(min(0.5, self.config.sample_interval_s))

    async def run(self) -> None:
        cfg = self.config
        await self.sample()  # the idle baseline
        stop = asyncio.Event()
        sampler = asyncio.create_task(self._sampler(stop))
        deadline = self.now() + cfg.duration_s
        try:
            await asyncio.gather(*(self._worker(deadline) for _ in range(cfg.concurrency)))
        finally:
            self.load_end = self.now()
            stop.set()
            await sampler
        await self._drain()

    async def final_probe(self) -> str:
        """'' when the server still answers /health and one short completion after the soak."""
        try:
            health = await self.client.get("/health", timeout=30.0)
            if health.status_code != 200:
                return f"/health answered {health.status_code} after the soak"
            body = {"model": self.model, "prompt": "a leaf", "max_tokens": 2, "temperature": 0}
            r = await self.client.post("/v1/completions", json=body, timeout=60.0)
            if r.status_code != 200:
                return f"a short completion after the soak answered {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            return f"server unreachable after the soak: {exc!r}"
        return ""


async def _run(config: SoakConfig, model: str) -> dict[str, Any]:
    soak = Soak(config, model)
    try:
        await soak.run()
        probe = await soak.final_probe()
    finally:
        await soak.client.aclose()
    return {
        "records": [asdict(r) for r in soak.records],
        "samples": [asdict(s) for s in soak.samples],
        "load_end_s": soak.load_end,
        "drained_at_s": soak.drained_at,
        "final_probe": probe,
    }


def model_id(url: str, api_key: str | None = None) -> str:
    """The first model the server lists (what valid requests name)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=30.0)
    r.raise_for_status()
    return str(r.json()["data"][0]["id"])


def run_soak(config: SoakConfig, model: str | None = None) -> dict[str, Any]:
    """Run one soak against `config.url`; returns raw records, samples and the final probe."""
    return asyncio.run(_run(config, model or model_id(config.url, config.api_key)))
