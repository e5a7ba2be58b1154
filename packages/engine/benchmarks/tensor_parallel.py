"""TP=2 (`mp`, one core per rank) vs TP=1 (both cores), side by side in one run.

Offline throughput of N requests of P random prompt tokens and O output tokens (ignore_eos)
on a random model of SmolLM2-135M's shape except for its attention heads: SmolLM2's 9 query /
3 KV heads do not split over 2 ranks, so this one has 8 query / 4 KV heads of size 72 (same
hidden size 576, 30 layers, MLP 1536, vocab 49152, tied embeddings), float32 on CPU.
Reports output tok/s of each, and for TP=2 where a step's time goes: rank 0's time in
collectives (all-reduces after each row-parallel layer and the vocab embedding, the gather
of logits), and the driver's overhead (laying out the step, pickling it to both pipes and
unpickling rank 0's logits) as driver time in `execute_model` minus rank 0's step time.

    python packages/engine/benchmarks/tensor_parallel.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import leaflm.engine  # noqa: F401  (first: its OpenMP default must precede torch's import)

SHAPE = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 72,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
}


def model_dir(cache_dir: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from leaflm.engine.testing import tiny_config, train_tiny_tokenizer

    target = cache_dir / "smollm135m-shape-8heads-random"
    if not (target / "config.json").is_file():
        train_tiny_tokenizer(target)
        shape = dict(SHAPE)
        config = tiny_config("llama", shape.pop("vocab_size"), **shape)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(target)
    return target


def run(model: str, prompts: list[list[int]], output_len: int, tp: int) -> dict:
    from leaflm.engine import LLM, SamplingParams

    llm = LLM(model, kv_cache_memory="1GiB", tensor_parallel_size=tp)
    try:
        warm = SamplingParams(max_tokens=4, ignore_eos=True)
        llm.generate(prompts[:2], warm, use_tqdm=False)
        executor = llm.llm_engine.executor
        before = executor.collective_rpc("step_stats")[0] if tp > 1 else None
        driver_before = getattr(executor, "execute_seconds", 0.0)
        params = SamplingParams(temperature=1.0, max_tokens=output_len, ignore_eos=True)
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        result = {
            "tp": tp,
            "elapsed_s": round(elapsed, 2),
            "output_tok_s": round(sum(len(o.outputs[0].token_ids) for o in outs) / elapsed, 1),
        }
        if tp > 1:
            after = executor.collective_rpc("step_stats")[0]
            steps = after["steps"] - before["steps"]
            step_s = after["step_s"] - before["step_s"]
            comm_s = after["comm_s"] - before["comm_s"]
            driver_s = executor.execute_seconds - driver_before
            result.update(
                steps=steps,
                rank0_step_ms=round(1e3 * step_s / steps, 2),
                rank0_comm_ms_per_step=round(1e3 * comm_s / steps, 2),
                collectives_per_step=round((after["comm_calls"] - before["comm_calls"]) / steps),
                driver_overhead_ms_per_step=round(1e3 * (driver_s - step_s) / steps, 2),
                engine_other_ms_per_step=round(1e3 * (elapsed - driver_s) / steps, 2),
            )
        return result
    finally:
        llm.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/leaflm/bench"))
    args = parser.parse_args()

    import torch

    model = str(model_dir(Path(args.cache_dir)))
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(10, SHAPE["vocab_size"], (args.input_len,), generator=g).tolist()
        for _ in range(args.num_prompts)
    ]
    tp1 = run(model, prompts, args.output_len, 1)
    tp2 = run(model, prompts, args.output_len, 2)
    tp2["ratio_vs_tp1"] = round(tp2["output_tok_s"] / tp1["output_tok_s"], 3)
    print(json.dumps({"cores": len(os.sched_getaffinity(0)), "tp1": tp1, "tp2": tp2}))


if __name__ == "__main__":
    main()
