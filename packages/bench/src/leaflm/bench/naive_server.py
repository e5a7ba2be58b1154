"""The naive serving baseline: FastAPI around HF `generate`, one request at a time.

This is the baseline the vLLM paper measured against: no batching, a global lock, and each
request streamed token by token from `model.generate` through a streamer. It speaks just
enough of the OpenAI API for the bench (streaming `/v1/completions` and
`/v1/chat/completions` with usage, `/v1/models`, `/health`), and honours `ignore_eos`.

Run: `python -m leaflm.bench.naive_server --model DIR --port 8100` (binds 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.tokenization_utils_base import BatchEncoding

from leaflm.bench.baselines import load_hf_model


class _QueueStreamer(BaseStreamer):
    """Hands each new token id from the generate thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first pushes the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, int(token))

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


class _Cancelled(StoppingCriteria):
    """Stops `generate` once the client has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    }
    return JSONResponse(body, status_code=status)


def create_app(model_dir: str, device: str = "cpu", dtype: str = "auto") -> FastAPI:
    """The app, with the model loaded once; requests are serialised by one lock."""
    from transformers import AutoTokenizer

    model = load_hf_model(model_dir, device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lock = asyncio.Lock()
    app = FastAPI(title="naive HF generate server")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_dir, "object": "model", "owned_by": "hf"}]}

    async def _stream(ids: list[int], body: dict[str, Any], chat: bool) -> AsyncIterator[str]:
        max_tokens = int(body.get("max_tokens") or 16)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        rid = f"naive-{uuid.uuid4().hex[:12]}"
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str, finish: str | None = None, usage: dict | None = None) -> str:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["delta"] = {"content": text} if text else {}
            else:
                choice["text"] = text
            data: dict[str, Any] = {
                "id": rid,
                "object": kind,
                "created": int(time.time()),
                "model": model_dir,
                "choices": [choice],
            }
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        async with lock:  # the naive part: one request at a time
            kwargs: dict[str, Any] = {
                "input_ids": torch.tensor([ids], device=model.device),
                "attention_mask": torch.ones((1, len(ids)), dtype=torch.long, device=model.device),
                "max_new_tokens": max_tokens,
                "do_sample": False,
                "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id or 0,
                "streamer": _QueueStreamer(loop, queue),
            }
            if body.get("ignore_eos"):
                kwargs["min_new_tokens"] = max_tokens
            cancel = threading.Event()
            kwargs["stopping_criteria"] = StoppingCriteriaList([_Cancelled(cancel)])

            def work() -> None:
                with torch.inference_mode():
                    model.generate(**kwargs)

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            generated: list[int] = []
            sent = ""
            try:
                while (token := await queue.get()) is not None:
                    generated.append(token)
                    text = cast(str, tokenizer.decode(generated, skip_special_tokens=True))
                    if text.endswith("\ufffd"):
                        continue  # wait for the rest of a multi-byte character
                    yield chunk(text[len(sent) :])
                    sent = text
            finally:  # a client that hangs up stops its generation before the lock is freed
                cancel.set()
                await asyncio.to_thread(thread.join)
        finish = "length" if len(generated) >= max_tokens else "stop"
        usage = {
            "prompt_tokens": len(ids),
            "completion_tokens": len(generated),
            "total_tokens": len(ids) + len(generated),
        }
        yield chunk("", finish, usage)
        yield "data: [DONE]\n\n"

    async def _handle(request: Request, chat: bool) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return _error(400, "messages must be a non-empty list", "messages")
            # tokenize=True: the ids, bare or in a BatchEncoding (the stubs cover every mode)
            encoded = cast(
                "list[int] | BatchEncoding",
                tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True),
            )
            ids = encoded if isinstance(encoded, list) else encoded["input_ids"]
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                return _error(400, "prompt must be a non-empty string", "prompt")
            ids = tokenizer.encode(prompt, add_special_tokens=False)
        if not body.get("stream"):
            return _error(400, "this baseline only streams: set stream=true", "stream")
        return StreamingResponse(_stream(list(ids), body, chat), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await _handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await _handle(request, chat=True)

    return app


def build_parser() -> argparse.ArgumentParser:
    """`python -m leaflm.bench.naive_server` flags (infra/compose runs it; tests check them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF model directory")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    app = create_app(args.model, args.device, args.dtype)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
