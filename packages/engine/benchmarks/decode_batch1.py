"""Batch-1 decode on CPU: where a step's milliseconds go, and leaflm against llama.cpp.

One process, the embedded default model (SmolLM2-135M-Instruct) in float32, one greedy
stream of 128 prompt tokens: decode tok/s with CPU graphs and without (eager Python
forward), interleaved round by round; the same step's linear layers alone (every packed
weight applied to one row, the floor set by memory bandwidth) and the attention; with
`--llama-bench`, llama.cpp's `llama-bench -n N` on the given GGUF files in the same rounds.

    OMP_NUM_THREADS=2 python packages/engine/benchmarks/decode_batch1.py \
        --llama-bench ~/.cache/leaflm/bench-peers/llama-cpp-0.3.36/bin/llama-bench \
        --gguf ~/.cache/leaflm/bench-peers/llama-cpp-0.3.36/models/SmolLM2-135M-Instruct.F32.gguf
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

import leaflm.engine  # noqa: F401  (first: its OpenMP default must precede torch's import)


def decode_tok_s(llm, prompt: list[int], new_tokens: int) -> float:
    """Decode-only rate: a run of 1 + new_tokens minus a run of 1 (the prefill)."""
    from leaflm.engine import SamplingParams

    def run(n: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        t0 = time.perf_counter()
        llm.generate([prompt], params, use_tqdm=False)
        return time.perf_counter() - t0

    first = min(run(1) for _ in range(3))
    return new_tokens / (run(1 + new_tokens) - first)


def linear_floor_ms(llm, prompt: list[int]) -> tuple[float, float]:
    """(ms, MB) of applying every linear layer to one row, as a decode step does (whatever the
    weight method: the layers are called as the model calls them)."""
    import torch

    from leaflm.engine import SamplingParams
    from leaflm.engine.layers.linear import PackableLinear

    runner = llm.llm_engine.runner
    layers = [m for m in runner.model.modules() if isinstance(m, PackableLinear)]
    widths: dict[int, int] = {}

    def record(mod, args) -> None:  # a pre-hook returning a value would replace the input
        widths.setdefault(id(mod), args[0].shape[-1])

    hooks = [m.register_forward_pre_hook(record) for m in layers]
    runner.graphs.disabled, before = "measuring the layers' inputs", runner.graphs.disabled
    llm.generate([prompt], SamplingParams(max_tokens=1), use_tqdm=False)
    runner.graphs.disabled = before
    for h in hooks:
        h.remove()
    xs = [torch.randn(1, widths[id(m)]) for m in layers]

    def step() -> None:
        for m, x in zip(layers, xs, strict=True):
            m(x)

    with torch.inference_mode():
        step()
        times = []
        for _ in range(40):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    mb = sum(_weight_bytes(m) for m in layers) / 1e6
    return statistics.median(times) * 1000, mb


def _weight_bytes(layer) -> int:
    """Bytes a forward of `layer` streams: every tensor it holds (weights, scales, panels)."""
    import torch

    packed = getattr(layer, "packed", None)
    values = [*layer.parameters(), *layer.buffers(), *vars(layer).values()]
    values += list(vars(packed).values()) if hasattr(packed, "__dict__") else []
    seen: set[int] = set()
    total = 0
    for value in values:
        if isinstance(value, torch.Tensor) and value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            total += value.numel() * value.element_size()
    return total


def llama_bench(binary: str, gguf: str, new_tokens: int) -> float:
    cmd = [binary, "-m", gguf, "-t", "2", "-p", "0", "-n", str(new_tokens), "-r", "3", "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def main() -> None:
    from leaflm.engine import LLM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--llama-bench", help="path of llama.cpp's llama-bench binary")
    parser.add_argument("--gguf", action="append", default=[], help="GGUF file(s) for it")
    parser.add_argument("--quantization", help="leaflm's weight method (int8, gguf)")
    args = parser.parse_args()

    extra = {"quantization": args.quantization} if args.quantization else {}
    llm = LLM(kv_cache_memory="256MiB", max_model_len=1024, **extra)
    runner = llm.llm_engine.runner
    prompt = list(range(1000, 1128))
    decode_tok_s(llm, prompt, 8)  # warm-up (and the batch-1 graph's capture)
    rates: dict[str, list[float]] = {"leaflm_graphs": [], "leaflm_eager": []}
    rates.update({f"llama.cpp {g.rsplit('/', 1)[-1]}": [] for g in args.gguf})
    floors = []
    for _ in range(args.rounds):
        for mode in ("graphs", "eager"):
            runner.graphs.disabled = None if mode == "graphs" else "benchmark: eager"
            rates[f"leaflm_{mode}"].append(decode_tok_s(llm, prompt, args.new_tokens))
        runner.graphs.disabled = None
        floors.append(linear_floor_ms(llm, prompt))
        for g in args.gguf if args.llama_bench else []:
            rates[f"llama.cpp {g.rsplit('/', 1)[-1]}"].append(
                llama_bench(args.llama_bench, g, args.new_tokens)
            )
    floor_ms = statistics.median(f for f, _ in floors)
    medians = {k: round(statistics.median(v), 1) for k, v in rates.items() if v}
    step_ms = 1000 / medians["leaflm_graphs"]
    print(
        json.dumps(
            {
                "new_tokens": args.new_tokens,
                "decode_tok_s_per_round": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                "decode_tok_s_median": medians,
                "graph_step_ms": round(step_ms, 2),
                "eager_step_ms": round(1000 / medians["leaflm_eager"], 2),
                "linear_layers_alone_ms": round(floor_ms, 2),
                "linear_weight_MB": round(floors[0][1], 1),
                "linear_GB_per_s": round(floors[0][1] / floor_ms, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
