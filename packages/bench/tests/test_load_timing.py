"""The Locust streaming user's TTFT/ITL, checked against a server with known delays.

The server waits TTFT before the first token and ITL between tokens, flushing each SSE
event as its own HTTP chunk. Locust runs in its own process (as in real runs), and the
records it reports must show those delays, not the time to the response headers.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from leaflm.bench.serve import run_level
from leaflm.bench.sse import Target
from leaflm.bench.workload import BenchRequest

TTFT, ITL, TOKENS = 0.30, 0.10, 5


class _DelayedSSE(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["stream"] is True and body["ignore_eos"] is True
        self.send_response(200)  # headers go out at once: Locust's own timer would stop here
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        time.sleep(TTFT)
        for i in range(TOKENS):
            if i:
                time.sleep(ITL)
            self._chunk(f'data: {{"choices": [{{"index": 0, "text": "t{i}"}}]}}\n\n')
        usage = {"prompt_tokens": 3, "completion_tokens": TOKENS, "total_tokens": 3 + TOKENS}
        self._chunk(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n")
        self._chunk("data: [DONE]\n\n")
        self._chunk("")


@pytest.fixture
def delayed_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DelayedSSE)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_locust_user_measures_ttft_and_itl_of_the_stream(delayed_server):
    target = Target("delayed", delayed_server, model="m", ignore_eos="field")
    workload = [BenchRequest(prompt="hello there", prompt_token_ids=[1, 2, 3], output_len=TOKENS)]
    result = run_level(target, workload, concurrency=2, num_requests=4, time_limit=60)

    assert not result["timed_out"] and len(result["records"]) == 4
    for rec in result["records"]:
        assert rec["success"], rec["error"]
        assert rec["output_tokens"] == TOKENS
        assert TTFT <= rec["ttft"] < TTFT + 0.12
        assert len(rec["itl"]) == TOKENS - 1
        assert all(ITL * 0.9 <= gap < ITL + 0.08 for gap in rec["itl"])
        e2e = rec["end"] - rec["start"]
        assert TTFT + (TOKENS - 1) * ITL <= e2e < TTFT + (TOKENS - 1) * ITL + 0.2
    # two users, two requests each, back to back: about 2 x 0.7 s of wall time
    assert 1.3 < result["duration_s"] < 2.5
    stats = result["locust_stats"]
    assert stats["ttft"]["num_requests"] == 4
    assert TTFT * 1000 <= stats["ttft"]["avg_ms"] < (TTFT + 0.12) * 1000
    assert stats["e2e"]["num_failures"] == 0


def test_time_limit_stops_a_run_and_failures_are_counted(delayed_server):
    target = Target("delayed", delayed_server, model="m", ignore_eos="field")
    workload = [BenchRequest(prompt="x", prompt_token_ids=[1], output_len=TOKENS)]
    start = time.monotonic()
    result = run_level(target, workload, concurrency=1, num_requests=50, time_limit=1.5)
    assert time.monotonic() - start < 15
    assert result["timed_out"] and 1 <= len(result["records"]) < 50

    dead = Target("dead", "http://127.0.0.1:9", model="m")  # nothing listens on port 9
    result = run_level(dead, workload, concurrency=1, num_requests=2, time_limit=30)
    assert [r["success"] for r in result["records"]] == [False, False]
    assert result["locust_stats"]["e2e"]["num_failures"] == 2


def test_a_spent_time_budget_skips_targets_and_levels(delayed_server, tmp_path):
    from leaflm.bench.serve import TargetSpec, run_serve

    workload = [BenchRequest(prompt="x", prompt_token_ids=[1], output_len=TOKENS)]
    spec = TargetSpec(name="delayed", url=delayed_server, ignore_eos="field")
    rows, raw, problems = run_serve([spec], workload, "", [1, 2], tmp_path, budget_s=0)
    assert rows == [] and raw == {} and problems == ["delayed: skipped, time budget spent"]
    # level 1 starts with ~10.3 s left (after a 0.7 s warm-up); it takes >= 0.7 s more, so
    # level 2 would start with < MIN_LEVEL_SECONDS (10 s) left and is skipped
    rows, raw, problems = run_serve([spec], workload, "", [1, 2], tmp_path, min_requests=1,
                                    per_user=1, budget_s=11, log=lambda _m: None)  # fmt: skip
    assert [r["concurrency"] for r in rows] == [1] and rows[0]["completed"] == 1
    assert problems == ["delayed@2 users: skipped, time budget spent"]
