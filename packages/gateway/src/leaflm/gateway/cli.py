"""`leaflm serve [MODEL]` (and `python -m leaflm.gateway`): load the engine, run uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="HF model dir, .gguf file or known short name (default: the embedded model)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--served-model-name", default=None, help="model id clients send")
    p.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="most generation requests held at once; more get 429 (default: no limit)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    e = p.add_argument_group("engine")
    e.add_argument("--dtype", default="auto")
    e.add_argument("--device", default="auto")
    e.add_argument("--block-size", type=int, default=16)
    e.add_argument("--kv-cache-memory", default=None, help='bytes or e.g. "512MiB"')
    e.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    e.add_argument("--max-num-seqs", type=int, default=256)
    e.add_argument("--max-num-batched-tokens", type=int, default=None)
    e.add_argument("--max-model-len", type=int, default=None)
    e.add_argument("--tensor-parallel-size", type=int, default=1)
    e.add_argument("--distributed-executor-backend", default=None, choices=["uni", "mp", "ray"])
    caching = e.add_mutually_exclusive_group()
    caching.add_argument(
        "--enable-prefix-caching", dest="enable_prefix_caching", action="store_true", default=True
    )
    caching.add_argument(
        "--disable-prefix-caching", dest="enable_prefix_caching", action="store_false"
    )
    e.add_argument("--swap-space", type=float, default=0.0, help="GiB of CPU swap for KV blocks")
    e.add_argument("--seed", type=int, default=0)


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
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_model_len": args.max_model_len,
        "tensor_parallel_size": args.tensor_parallel_size,
        "distributed_executor_backend": args.distributed_executor_backend,
        "enable_prefix_caching": args.enable_prefix_caching,
        "swap_space_gb": args.swap_space,
        "seed": args.seed,
    }


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from leaflm.engine import AsyncLLM
    from leaflm.gateway.app import create_app
    from leaflm.gateway.settings import GatewaySettings

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = GatewaySettings(
            api_key=args.api_key,
            served_model_name=args.served_model_name,
            max_queue=args.max_queue,
            shutdown_engine=True,
        )
        engine = AsyncLLM(model=args.model, **engine_kwargs(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"leaflm serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(engine, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaflm.gateway", description=__doc__)
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))
