"""The `leaflm` command.

Subcommands come from the installed packages through the `leaflm.cli` entry-point group
(engine: generate, chat, cache; gateway: serve; bench: bench), the way `vllm serve` and
`vllm bench` are split across one tool. Each entry point is a function that receives the
argparse subparsers object and registers its command with `set_defaults(func=...)`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from leaflm.engine import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leaflm", description="leaflm: high-throughput LLM inference and serving."
    )
    parser.add_argument("--version", action="version", version=f"leaflm-engine {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="leaflm.cli"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # one broken plugin must not take the other commands down
            print(f"leaflm: skipping command {ep.name!r}: {exc}", file=sys.stderr)
            continue
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


def add_generate_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate text offline from one or more prompts")
    p.add_argument("prompts", nargs="+", help="prompt text(s)")
    p.add_argument("--model", default=None, help="HF model dir or .gguf file (default: embedded)")
    _add_sampling_args(p)
    p.set_defaults(func=_run_generate)


def add_chat_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="one chat turn through the model's chat template")
    p.add_argument("message", help="the user message")
    p.add_argument("--model", default=None, help="HF model dir or .gguf file (default: embedded)")
    p.add_argument("--system", default=None, help="optional system prompt")
    _add_sampling_args(p)
    p.set_defaults(func=_run_chat)


def add_cache_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cache", help="show or clear leaflm's cache of converted GGUF models")
    p.add_argument(
        "action",
        choices=["info", "clear"],
        help="info: where it is and what it holds; clear: delete it",
    )
    p.set_defaults(func=_run_cache)


def _run_cache(args: argparse.Namespace) -> int:
    from leaflm.engine.gguf.cache import cache_entries, cache_root, clear_cache

    if args.action == "clear":
        freed = clear_cache()
        print(f"cleared {cache_root()} ({freed / 2**20:.1f} MiB freed)")
        return 0
    entries = cache_entries()
    total = sum(size for _, size, _ in entries)
    print(
        f"leaflm cache: {cache_root()} ({total / 2**20:.1f} MiB; set LEAFLM_CACHE_DIR to move it)"
    )
    for path, size, what in entries:
        print(f"  {size / 2**20:9.1f} MiB  {path.name}  {what}")
    return 0


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantization", default=None,
        help="weight format of the linear layers: int8 (W8A8 on CPU), gguf (a GGUF model's own "
        "blocks) (default: float)",
    )  # fmt: skip
    p.add_argument(
        "--kv-cache-memory", default=None,
        help="CPU KV cache size, e.g. 256MiB (default: the engine's, allocated whole at start)",
    )  # fmt: skip
    p.add_argument(
        "--kv-cache-dtype", default="auto",
        help="the KV cache's element type: auto (the model's), float16 or bfloat16",
    )  # fmt: skip
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def show_startup_progress() -> None:
    """Print the engine's start-up phases on stderr (stdout keeps only the generated text)."""
    log = logging.getLogger("leaflm")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("leaflm: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    log.info("importing torch and transformers")


def _run_generate(args: argparse.Namespace) -> int:
    show_startup_progress()
    from leaflm.engine import LLM, SamplingParams

    llm = LLM(
        model=args.model, kv_cache_memory=args.kv_cache_memory, quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
    )  # fmt: skip
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    for out in llm.generate(args.prompts, params, use_tqdm=False):
        sys.stdout.write(out.prompt + out.outputs[0].text + "\n")
    return 0


def _run_chat(args: argparse.Namespace) -> int:
    show_startup_progress()
    from leaflm.engine import LLM, SamplingParams

    llm = LLM(
        model=args.model, kv_cache_memory=args.kv_cache_memory, quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
    )  # fmt: skip
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.message})
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    out = llm.chat(messages, params, use_tqdm=False)
    sys.stdout.write(out[0].outputs[0].text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
