"""`leaflm serve [MODEL]` (and `python -m leaflm.gateway`): load the engine, run uvicorn."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from leaflm.gateway.settings import GatewaySettings


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="HF model dir, .gguf file or known short name (default: the embedded model)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--api-key", default=None,
        help="require 'Authorization: Bearer KEY' (default: no key needed)",
    )  # fmt: skip
    p.add_argument(
        "--served-model-name", default=None,
        help="model id clients send (default: the model's title or file name)",
    )  # fmt: skip
    p.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="most generation requests held at once; more get 429 (default: no limit)",
    )
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="log level of leaflm and uvicorn (default: %(default)s)",
    )  # fmt: skip
    _add_limit_arguments(p)
    e = p.add_argument_group("engine")
    e.add_argument(
        "--dtype", default="auto",
        help="float32, float16 or bfloat16 (default: auto = float32 on CPU; on CUDA the "
        "model's float16/bfloat16, else bfloat16)",
    )  # fmt: skip
    e.add_argument(
        "--quantization", default=None,
        help="weight format of the linear layers: int8 (per-channel int8 weights, per-token "
        "int8 activations, CPU only), gguf (a GGUF model's linear layers on the file's own "
        "blocks, CPU only) (default: the model's float weights)",
    )  # fmt: skip
    e.add_argument(
        "--device", default="auto",
        help="cpu, cuda or cuda:N (default: auto = cuda when available, else cpu)",
    )  # fmt: skip
    e.add_argument(
        "--block-size", type=int, default=16,
        help="tokens per KV-cache block, a power of two up to 128 (default: %(default)s)",
    )  # fmt: skip
    e.add_argument(
        "--kv-cache-memory", default=None,
        help='CPU KV-cache size, bytes or e.g. "512MiB" (default: what max-num-seqs x '
        "max-model-len tokens need, at most min(4 GiB, RAM/4)); on CUDA see "
        "--gpu-memory-utilization",
    )  # fmt: skip
    e.add_argument(
        "--kv-cache-dtype", default="auto",
        help="the KV cache's element type: auto (the model's dtype), float16 or bfloat16; "
        "float16 halves what decode attention reads on a float32 CPU model (on CPU bfloat16 "
        "runs the slower PyTorch attention) (default: %(default)s)",
    )  # fmt: skip
    e.add_argument(
        "--kv-cache-prefault", default="1GiB",
        help="CPU: how much of the KV cache (its first blocks, the first handed out) is made "
        "resident at start, so early requests do not page-fault mid-step; 0: none "
        "(default: %(default)s, at most the cache)",
    )  # fmt: skip
    e.add_argument(
        "--gpu-memory-utilization", type=float, default=0.9,
        help="share of GPU memory for weights, activations and the KV cache (default: "
        "%(default)s)",
    )  # fmt: skip
    e.add_argument(
        "--max-num-seqs", type=int, default=256,
        help="most sequences running at once (default: %(default)s)",
    )  # fmt: skip
    e.add_argument(
        "--max-num-batched-tokens", type=int, default=None,
        help="most tokens one step runs, prefill chunks included (default: 2048 on CPU, 8192 "
        "on CUDA)",
    )  # fmt: skip
    e.add_argument(
        "--max-model-len", type=int, default=None,
        help="longest prompt plus output, in tokens (default: the model's "
        "max_position_embeddings, or what the KV cache holds if less)",
    )  # fmt: skip
    e.add_argument(
        "--tensor-parallel-size", type=int, default=1,
        help="ranks to shard the model over: GPUs, or groups of CPU cores (default: "
        "%(default)s)",
    )  # fmt: skip
    e.add_argument(
        "--distributed-executor-backend", default=None, choices=["uni", "mp", "ray"],
        help="how ranks run: uni (in-process, TP=1), mp (a process per rank on this node) or "
        "ray (an actor per rank, possibly on other nodes) (default: uni for TP=1, else ray "
        "when a Ray cluster is connected, else mp)",
    )  # fmt: skip
    caching = e.add_mutually_exclusive_group()
    caching.add_argument(
        "--enable-prefix-caching", dest="enable_prefix_caching", action="store_true",
        default=True, help="reuse the KV blocks of prompt prefixes seen before (default: on)",
    )  # fmt: skip
    caching.add_argument(
        "--disable-prefix-caching", dest="enable_prefix_caching", action="store_false",
        help="turn prefix caching off (default: caching on)",
    )  # fmt: skip
    e.add_argument(
        "--swap-space", type=float, default=0.0,
        help="GiB of host memory that preempted sequences' KV blocks are swapped to (default: "
        "%(default)s = recompute them instead)",
    )  # fmt: skip
    e.add_argument(
        "--seed", type=int, default=0,
        help="seed for requests that send none (default: %(default)s)",
    )  # fmt: skip


def _json_list(text: str) -> list[str]:
    """vLLM's form for the CORS flags: a JSON list such as '["https://a.example"]'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON list of strings, got {text!r}") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError(f"expected a JSON list of strings, got {text!r}")
    return value


def _add_limit_arguments(p: argparse.ArgumentParser) -> None:
    d = GatewaySettings()
    g = p.add_argument_group("limits and connections")
    g.add_argument(
        "--max-n",
        type=int,
        default=d.max_n,
        help="most completions (n, best_of) per request; --max-num-seqs caps it too "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--max-stop-sequences",
        type=int,
        default=d.max_stop_sequences,
        help="most stop strings per request (default: %(default)s)",
    )
    g.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=d.max_request_body_bytes,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        default=d.shutdown_timeout_s,
        help="seconds in-flight requests may finish after SIGTERM before they are "
        "aborted with a final error event (default: %(default)s)",
    )
    g.add_argument(
        "--timeout-keep-alive",
        type=float,
        default=d.timeout_keep_alive_s,
        help="seconds an idle keep-alive connection stays open (default: %(default)s)",
    )
    g.add_argument(
        "--timeout-request-header",
        type=float,
        default=d.timeout_request_header_s,
        help="seconds a connection has to send each request head (default: %(default)s)",
    )
    g.add_argument(
        "--limit-concurrency",
        type=int,
        default=None,
        help="most open connections; more get 503 (default: no limit)",
    )
    g.add_argument(
        "--allowed-origins",
        type=_json_list,
        default=None,
        help="CORS origins as a JSON list, e.g. '[\"*\"]' (default: no CORS)",
    )
    g.add_argument(
        "--allowed-methods",
        type=_json_list,
        default=d.allowed_methods,
        help="CORS methods as a JSON list (default: %(default)s)",
    )
    g.add_argument(
        "--allowed-headers",
        type=_json_list,
        default=d.allowed_headers,
        help="CORS headers as a JSON list (default: %(default)s)",
    )
    g.add_argument(
        "--allow-credentials", action="store_true", help="CORS: allow credentials (default: off)"
    )
    p.add_argument(
        "--tool-call-parser",
        default=d.tool_call_parser,
        choices=["hermes", "json"],
        help='how tool_choice="auto" answers are parsed for tool calls (default: %(default)s)',
    )


def gateway_settings(args: argparse.Namespace) -> GatewaySettings:
    """What the CLI flags say about the HTTP side (ValueError names a bad value)."""
    return GatewaySettings(
        api_key=args.api_key,
        served_model_name=args.served_model_name,
        max_queue=args.max_queue,
        shutdown_engine=True,
        max_n=args.max_n,
        max_stop_sequences=args.max_stop_sequences,
        max_request_body_bytes=args.max_request_body_bytes,
        shutdown_timeout_s=args.shutdown_timeout,
        timeout_keep_alive_s=args.timeout_keep_alive,
        timeout_request_header_s=args.timeout_request_header,
        limit_concurrency=args.limit_concurrency,
        allowed_origins=args.allowed_origins,
        allowed_methods=args.allowed_methods,
        allowed_headers=args.allowed_headers,
        allow_credentials=args.allow_credentials,
        tool_call_parser=args.tool_call_parser,
    )


def add_serve_command(subparsers: argparse._SubParsersAction) -> None:
    """Entry point of the `leaflm.cli` group: registers `leaflm serve`."""
    p = subparsers.add_parser("serve", help="serve a model over the OpenAI and TGI HTTP APIs")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kv = args.kv_cache_memory
    if isinstance(kv, str) and kv.isdigit():
        kv = int(kv)
    return {
        "dtype": args.dtype,
        "device": args.device,
        "block_size": args.block_size,
        "kv_cache_memory": kv,
        "kv_cache_prefault": int(p) if (p := args.kv_cache_prefault).isdigit() else p,
        "kv_cache_dtype": args.kv_cache_dtype,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_model_len": args.max_model_len,
        "tensor_parallel_size": args.tensor_parallel_size,
        "distributed_executor_backend": args.distributed_executor_backend,
        "enable_prefix_caching": args.enable_prefix_caching,
        "swap_space_gb": args.swap_space,
        "seed": args.seed,
        "quantization": args.quantization,
    }


def run_serve(args: argparse.Namespace) -> int:
    from leaflm.gateway.port_check import address_problem

    problem = address_problem(args.host, args.port)  # before minutes of model loading
    if problem:
        print(f"leaflm serve: {problem}", file=sys.stderr)
        return 2

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("leaflm").info("importing torch, transformers and the server")
    from leaflm.engine import AsyncLLM
    from leaflm.gateway.app import create_app
    from leaflm.gateway.http_server import build_server

    try:
        settings = gateway_settings(args)
        engine = AsyncLLM(model=args.model, **engine_kwargs(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"leaflm serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(engine, settings)
    build_server(app, settings, args.host, args.port, args.log_level).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaflm.gateway", description=__doc__)
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))
