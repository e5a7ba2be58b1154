"""GGUF block kernels (Q4_1, Q8_0) against leaflm's float32 packed GEMM, on SmolLM-135M's shapes.

Without AVX-512 (no packed GEMM) the fp32 column is left out and the GGUF kernels' own path
(AVX2 or portable C) is timed alone.

Each weight is cycled through enough copies that a pass streams it from memory (what a
decode step does: every weight once per token), so batch 1 shows the bandwidth each format
gets and batch 64 the compute. Figures are the best of ``--repeats`` passes: ms per call
and the weight bytes streamed per second.

    OMP_NUM_THREADS=2 python -m leaflm.kernels.benchmarks.cpu_gguf_gemm [--rows 1 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from leaflm.kernels.cpu import gemm, gguf_blocks, gguf_gemm

SHAPES = {
    "o 576x576": (576, 576),
    "k/v 192x576": (192, 576),
    "gate/up 3072x576": (3072, 576),
    "down 576x1536": (576, 1536),
    "head 49152x576": (49152, 576),
}
COLD_BYTES = 96 * 1024**2  # more than the last-level cache: every call reads memory
FORMATS = {"Q4_1": 3, "Q8_0": 8}


def _copies(nbytes: int) -> int:
    return max(2, -(-COLD_BYTES // nbytes))


def time_ms(apply, weights: list, x: torch.Tensor, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for w in weights:
            apply(x, w)
        best = min(best, (time.perf_counter() - start) / len(weights))
    return best * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not gguf_gemm.available():
        raise SystemExit(f"needs the C kernels: {gguf_gemm.unavailable_reason()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {gguf_gemm.simd()}")
    names = ["fp32", *FORMATS] if gemm.panel_width() else list(FORMATS)
    print("| shape | rows | " + " | ".join(f"{n} ms (GB/s)" for n in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    g = torch.Generator().manual_seed(0)
    for label, (n, k) in SHAPES.items():
        built = {}
        if "fp32" in names:
            w = torch.randn(n, k, generator=g) / 24
            built["fp32"] = ([gemm.pack_weight(w) for _ in range(_copies(4 * n * k))], 4 * n * k)
            del w
        for name, qtype in FORMATS.items():
            raw = gguf_blocks.random_blocks(qtype, n, k, seed=n + qtype)
            nbytes = raw.nbytes
            copies = [gguf_gemm.pack_gguf_weight(raw, qtype, n, k) for _ in range(_copies(nbytes))]
            built[name] = (copies, nbytes)
        for rows in args.rows:
            x = torch.randn(rows, k, generator=g)
            cells = []
            for name in names:
                weights, nbytes = built[name]
                apply = gemm.packed_linear if name == "fp32" else gguf_gemm.gguf_linear
                ms = time_ms(apply, weights, x, args.repeats)
                cells.append(f"{ms:.3f} ({nbytes / ms / 1e6:.1f})")
            print(f"| {label} | {rows} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
