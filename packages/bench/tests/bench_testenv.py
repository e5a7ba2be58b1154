"""Fake OpenAI servers for the bench tests: run in a thread on 127.0.0.1, always stopped."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from leaflm.bench.servers import free_port


@contextmanager
def thread_server(app: FastAPI, startup_s: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a daemon thread; yields its base URL, stops it on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def completion_stream(
    count: int, prompt_tokens: int, text: Callable[[int], str] = lambda i: f" t{i}"
) -> StreamingResponse:
    """A streamed completion of `count` chunks, then its usage (as vLLM and leaflm send it)."""

    def events() -> Iterator[str]:
        for i in range(count):
            yield f"data: {json.dumps({'choices': [{'index': 0, 'text': text(i)}]})}\n\n"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count}
        yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
