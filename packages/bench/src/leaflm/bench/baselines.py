"""HuggingFace Transformers baselines for offline throughput, on the same weights as leaflm.

Three ways people actually run HF models, all greedy and with `ignore_eos` semantics
(exactly `output_len` new tokens per request):
- `hf-single`: `model.generate` one request at a time (what a naive script does);
- `hf-static`: `model.generate` in static, left-padded batches (a batch ends when its
  longest request ends; only requested tokens count as output);
- `hf-cb`: Transformers' own continuous batching, `model.generate_batch`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import groupby
from pathlib import Path

import torch

from leaflm.bench.machine import PeakMemory
from leaflm.bench.metrics import OfflineResult
from leaflm.bench.workload import BenchRequest


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is float32 on CPU (bf16 matmul is very slow on most CPUs) and bfloat16 on CUDA."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return value


def load_hf_model(model_dir: str | Path, device: str, dtype: str):
    """Load an HF causal LM in eval mode on `device`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, device))
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' decorated .to


def _pad_id(model) -> int:
    gen = model.generation_config
    for candidate in (gen.pad_token_id, model.config.pad_token_id, gen.eos_token_id):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


def _generate(model, batch: list[list[int]], new_tokens: int, device: str) -> torch.Tensor:
    """Greedy `generate` on a left-padded batch; returns only the new tokens."""
    pad = _pad_id(model)
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad,
    )
    return out[:, width:]


def _timed(
    name: str,
    requests: list[BenchRequest],
    model_dir: str | Path,
    device: str,
    dtype: str,
    body: Callable[[object], int],
    note: str = "",
    inference_mode: bool = True,
) -> OfflineResult:
    # generate_batch runs its loop in a thread outside inference mode: tensors made in
    # inference mode (the weights included) then fail on in-place updates there.
    with PeakMemory(device) as mem, torch.inference_mode(inference_mode):
        model = load_hf_model(model_dir, device, dtype)
        _generate(model, [requests[0].prompt_token_ids[:8]], 2, device)  # warm-up, untimed
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        output_tokens = body(model)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    del model
    return OfflineResult(
        backend=name,
        num_requests=len(requests),
        prompt_tokens=sum(r.prompt_len for r in requests),
        output_tokens=output_tokens,
        elapsed_s=elapsed,
        peak_memory_mb=mem.peak_mb,
        note=note,
    )


def run_hf_single(
    requests: list[BenchRequest], model_dir: str | Path, device: str = "cpu", dtype: str = "auto"
) -> OfflineResult:
    """`generate` one request at a time."""

    def body(model) -> int:
        produced = 0
        for r in requests:
            produced += _generate(model, [r.prompt_token_ids], r.output_len, device).shape[1]
        return produced

    return _timed("hf-single", requests, model_dir, device, dtype, body)


def run_hf_static(
    requests: list[BenchRequest],
    model_dir: str | Path,
    device: str = "cpu",
    dtype: str = "auto",
    batch_size: int = 32,
) -> OfflineResult:
    """`generate` in static left-padded batches of `batch_size`, in workload order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def body(model) -> int:
        produced = 0
        for i in range(0, len(requests), batch_size):
            chunk = requests[i : i + batch_size]
            longest = max(r.output_len for r in chunk)
            new = _generate(model, [r.prompt_token_ids for r in chunk], longest, device)
            produced += sum(min(r.output_len, new.shape[1]) for r in chunk)
        return produced

    return _timed("hf-static", requests, model_dir, device, dtype, body, note=f"batch {batch_size}")


def cb_cache_blocks(requests: list[BenchRequest], page_size: int) -> int:
    """KV blocks that hold every request of `requests` at once (prompt plus output)."""
    return sum(-(-(r.prompt_len + r.output_len) // page_size) for r in requests)


def run_hf_generate_batch(
    requests: list[BenchRequest],
    model_dir: str | Path,
    device: str = "cpu",
    dtype: str = "auto",
    num_blocks: int | None = None,
    max_batch_tokens: int | None = None,
) -> OfflineResult:
    """Transformers' continuous batching (`generate_batch`), one call per output length.

    Left to itself, `generate_batch` sizes its paged cache from free memory (90% of it; on a
    CPU host that is system RAM, >10 GB for a tiny model). On CPU the cache therefore holds
    exactly the workload (`cb_cache_blocks`) unless `num_blocks` says otherwise; on CUDA
    `None` keeps Transformers' own sizing. `max_batch_tokens=None` is Transformers' default.
    """
    from transformers import ContinuousBatchingConfig, GenerationConfig

    for name, value in (("num_blocks", num_blocks), ("max_batch_tokens", max_batch_tokens)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")

    def body(model) -> int:
        produced = 0
        by_len = sorted(requests, key=lambda r: r.output_len)
        for out_len, group_iter in groupby(by_len, key=lambda r: r.output_len):
            group = list(group_iter)
            config = GenerationConfig(
                max_new_tokens=out_len,
                do_sample=False,
                eos_token_id=None,  # generate_batch then disables EOS: ignore_eos
                pad_token_id=_pad_id(model),
            )
            cb = ContinuousBatchingConfig(max_batch_tokens=max_batch_tokens)
            cb.num_blocks = num_blocks
            if num_blocks is None and not device.startswith("cuda"):
                cb.num_blocks = cb_cache_blocks(group, cb.page_size)
            results = model.generate_batch(
                [r.prompt_token_ids for r in group],
                generation_config=config,
                continuous_batching_config=cb,
                progress_bar=False,
            )
            failed = [k for k, v in results.items() if v.error is not None]
            if failed:
                raise RuntimeError(f"generate_batch failed on {len(failed)} requests: {failed[:3]}")
            produced += sum(len(v.generated_tokens) for v in results.values())
        return produced

    return _timed(
        "hf-cb", requests, model_dir, device, dtype, body, "generate_batch", inference_mode=False
    )
