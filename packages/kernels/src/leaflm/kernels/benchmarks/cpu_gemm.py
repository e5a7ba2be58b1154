"""CPU linear layers side by side: leaflm's packed GEMM, oneDNN's packed matmul, F.linear.

One transformer layer's projections of a SmolLM-135M-shaped model (qkv 960x576, o 576x576,
gate/up 3072x576, down 576x1536) for decode- and prefill-sized batches, timed two ways:
``hot`` repeats one weight (it stays in cache), ``cold`` cycles through a model's worth of
copies (30 layers, so every call streams its weight from memory as a decode step does). Each
figure is the best of ``--repeats`` passes, in ms per layer and GFLOP/s.

    OMP_NUM_THREADS=2 python -m leaflm.kernels.benchmarks.cpu_gemm [--rows 1 8 64 2048]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from leaflm.kernels.cpu import gemm

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
LAYERS = 30


def _packer(backend: str) -> Callable[[torch.Tensor], object]:
    if backend == "F.linear":
        return lambda w: w
    os.environ[gemm.GEMM_VAR] = "onednn" if backend == "oneDNN" else "leaflm"
    gemm.panel_width.cache_clear()
    return gemm.pack_weight


def _apply(backend: str) -> Callable[[torch.Tensor, object], torch.Tensor]:
    return F.linear if backend == "F.linear" else gemm.packed_linear  # type: ignore[return-value]


def layer_ms(backend: str, rows: int, cold: bool, repeats: int) -> float:
    """Best time of one layer's four projections over ``rows`` rows, in ms."""
    pack, apply = _packer(backend), _apply(backend)
    g = torch.Generator().manual_seed(0)
    copies = LAYERS if cold else 1
    weights = {
        name: [pack(torch.randn(shape, generator=g) / 24) for _ in range(copies)]
        for name, shape in SHAPES.items()
    }
    inputs = {name: torch.randn(rows, shape[1], generator=g) for name, shape in SHAPES.items()}
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for layer in range(LAYERS):
            for name in SHAPES:
                apply(inputs[name], weights[name][layer % copies])
        best = min(best, (time.perf_counter() - start) / LAYERS)
    return best * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not gemm.packing_available():
        raise SystemExit("no packed CPU linear on this machine (LEAFLM_CPU_KERNELS=0?)")
    backends = ["leaflm", "oneDNN", "F.linear"]
    if not gemm.panel_width():
        backends.remove("leaflm")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| rows | weights | " + " | ".join(f"{b} ms (GFLOP/s)" for b in backends) + " |")
    print("|---:|---|" + "---:|" * len(backends))
    flops_per_row = 2 * sum(n * k for n, k in SHAPES.values())
    for rows in args.rows:
        for cold in (False, True):
            cells = []
            for backend in backends:
                ms = layer_ms(backend, rows, cold, args.repeats if rows < 1024 else 2)
                cells.append(f"{ms:.3f} ({rows * flops_per_row / ms / 1e6:.0f})")
            print(f"| {rows} | {'cold' if cold else 'hot'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
