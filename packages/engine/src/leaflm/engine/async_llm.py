"""AsyncLLM: the engine for asyncio servers, stepping in one background thread.

Requests and aborts are queued to the engine thread, which applies them between steps, so
the engine itself stays single-threaded. Each request has an asyncio queue; the engine
thread hands outputs to the request's event loop with `call_soon_threadsafe`. Leaving the
`generate` loop early (break, exception, task cancellation) aborts the request, which frees
its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from leaflm.engine.beam_search import BeamSearchParams
from leaflm.engine.config import EngineArgs
from leaflm.engine.engine import LLMEngine
from leaflm.engine.outputs import EngineStats, RequestOutput
from leaflm.engine.sampling_params import SamplingParams


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

    def put(self, item: RequestOutput | BaseException) -> None:
        _hand_over(self.loop, [(self.queue, item)])


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)


def _hand_over(loop: asyncio.AbstractEventLoop, items: list[tuple[asyncio.Queue, Any]]) -> None:
    """Queue `items` on `loop` with one wake-up of it (a step's outputs go in one call)."""
    # RuntimeError: the consumer's loop is closed, so nobody is listening any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_put_all, items)


class AsyncLLM:
    """Async front of LLMEngine; loads the model in `__init__`."""

    def __init__(self, model: str | Path | None = None, **kwargs: Any) -> None:
        self.engine = LLMEngine(EngineArgs(model=model, **kwargs))
        self.model_config = self.engine.model_config
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()  # guards _streams
        self._wake = threading.Event()
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="leaflm-engine", daemon=True)
        self._thread.start()

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def errored(self) -> bool:
        """True once the engine cannot serve any more (e.g. a tensor-parallel worker died)."""
        return self._error is not None or self.engine.executor.failed is not None

    async def generate(
        self,
        prompt: str | list[int],
        sampling_params: SamplingParams | BeamSearchParams | None,
        request_id: str,
    ) -> AsyncIterator[RequestOutput]:
        """Stream outputs of one request, shaped by `sampling_params.output_kind`."""
        if self._stopped:
            raise RuntimeError("AsyncLLM has been shut down")
        if self._error is not None:
            raise RuntimeError("the engine loop failed") from self._error
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, (SamplingParams, BeamSearchParams)):
            raise ValueError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        # Errors surface before any yield.
        truncate = getattr(params, "truncate_prompt_tokens", None)
        _, prompt_ids = self.engine.tokenize(prompt, truncate)
        stream = _Stream(asyncio.get_running_loop())
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"request_id {request_id!r} is already in use")
            self._streams[request_id] = stream
        self._send("add", (request_id, prompt, params, prompt_ids))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    break
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:
                self._send("abort", request_id)

    async def abort(self, request_id: str) -> None:
        """Abort a request; its stream (if still read) ends with finish_reason "abort"."""
        self._send("abort", request_id)

    async def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self.engine.shutdown()

    # -- engine thread -----------------------------------------------------------------------
    def _send(self, kind: str, payload: Any) -> None:
        self._commands.put((kind, payload))
        self._wake.set()

    def _deliver(self, out: RequestOutput | BaseException, request_id: str) -> None:
        self._deliver_all([(request_id, out)])

    def _deliver_all(self, items: list[tuple[str, RequestOutput | BaseException]]) -> None:
        """Hand items to their streams, one wake-up per consumer loop: a step's outputs go
        together, since waking the server's loop once a request (16 self-pipe writes a step
        at 16 users) costs CPU that the step's kernels are using."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        with self._lock:
            for request_id, out in items:
                stream = self._streams.get(request_id)
                if isinstance(out, BaseException) or getattr(out, "finished", False):
                    self._streams.pop(request_id, None)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, queued in by_loop.items():
            _hand_over(loop, queued)

    def _apply_commands(self) -> None:
        while True:
            try:
                kind, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                request_id, prompt, params, prompt_ids = payload
                try:
                    self.engine.add_request(request_id, prompt, params, prompt_token_ids=prompt_ids)
                except Exception as exc:  # validated already; report anything unexpected
                    self._deliver(exc, request_id)
            else:
                out = self.engine.abort(payload)
                if out is not None:
                    self._deliver(out, payload)

    def _loop(self) -> None:
        while not self._stopped:
            self._apply_commands()
            if not self.engine.has_unfinished():
                self._wake.wait(timeout=0.1)
                self._wake.clear()
                continue
            before = set(self.engine.requests)
            try:
                outputs = self.engine.step()
            except Exception as exc:  # the engine aborted that batch's requests: fail their streams
                for rid in before - set(self.engine.requests):
                    self._deliver(exc, rid)
                continue
            self._deliver_all([(out.request_id, out) for out in outputs])
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream.put(RuntimeError("AsyncLLM was shut down"))
