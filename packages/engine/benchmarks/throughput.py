"""Offline throughput: N requests of P random prompt tokens and O output tokens (ignore_eos).

Default shape is SmolLM-135M (hidden 576, intermediate 1536, 30 layers, 9 heads, 3 KV heads,
vocab 49152, tied embeddings) with random weights, float32 on CPU; the model directory is
built once and cached. Prints leaflm's output tokens/s; the bench package adds the HF
side-by-side.

    OMP_NUM_THREADS=2 python packages/engine/benchmarks/throughput.py [--quantization int8]

OpenMP's idle threads wait as `leaflm.engine` sets by default (a short spin, see its
`__init__`), since it is imported before torch; an OMP_WAIT_POLICY or GOMP_SPINCOUNT in the
environment wins.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import leaflm.engine  # noqa: F401  (first: its OpenMP default must precede torch's import)
from leaflm.kernels.cpu import gemm

SMOLLM_SHAPE = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
}


def smollm_shaped_model(cache_dir: Path) -> Path:
    """A random SmolLM-135M-shaped Llama, built once under `cache_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    from leaflm.engine.testing import tiny_config, train_tiny_tokenizer

    target = cache_dir / "smollm135m-shape-random"
    if not (target / "config.json").is_file():
        train_tiny_tokenizer(target)
        shape = dict(SMOLLM_SHAPE)
        config = tiny_config("llama", shape.pop("vocab_size"), **shape)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF dir (default: SmolLM-shaped random)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--quantization", default=None, help="e.g. int8 (default: float32)")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/leaflm/bench"))
    parser.add_argument("--json", action="store_true", help="print one JSON line instead")
    args = parser.parse_args()

    import torch

    from leaflm.engine import LLM, SamplingParams

    model = args.model or str(smollm_shaped_model(Path(args.cache_dir)))
    llm = LLM(
        model,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_memory="2GiB",
        quantization=args.quantization,
    )
    vocab = llm.llm_engine.runner.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(10, vocab, (args.input_len,), generator=g).tolist()
        for _ in range(args.num_prompts)
    ]
    params = SamplingParams(
        temperature=args.temperature, max_tokens=args.output_len, ignore_eos=True, seed=None
    )
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=not args.json)
    elapsed = time.perf_counter() - start
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    result = {
        "engine": "leaflm",
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "elapsed_s": round(elapsed, 3),
        "output_tok_s": round(out_tokens / elapsed, 2),
        "total_tok_s": round((out_tokens + args.num_prompts * args.input_len) / elapsed, 2),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "cpu_linear": args.quantization or gemm.linear_backend(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"leaflm: {out_tokens} output tokens in {elapsed:.2f}s = "
            f"{result['output_tok_s']} output tok/s ({result['total_tok_s']} total tok/s, "
            f"{result['threads']} threads)"
        )


if __name__ == "__main__":
    main()
