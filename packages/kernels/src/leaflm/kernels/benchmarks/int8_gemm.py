"""float32 packed GEMM against the W8A8 int8 GEMM on SmolLM2-135M's shapes.

The float32 GEMM is leaflm's (AVX-512) or oneDNN's, the int8 one AVX-512 VNNI or AVX2 (the
header line names both). Per shape (``gate_up`` is the merged gate/up weight with the SiLU
gate fused, except in oneDNN's, which runs it after; ``lm_head`` is the tied 49152-row head)
and batch size, the best of ``--repeats``
passes over enough copies of the weight that each call streams it from memory, as a decode
step does (weights cold); ms per call, and for batch 1 the weight bytes streamed per second.

    OMP_NUM_THREADS=2 python -m leaflm.kernels.benchmarks.int8_gemm [--rows 1 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from leaflm import kernels
from leaflm.kernels.cpu import gemm, int8_gemm

SHAPES = {
    "o 576x576": (576, 576),
    "qkv 960x576": (960, 576),
    "up 1536x576": (1536, 576),
    "gate_up 3072x576": (3072, 576),
    "down 576x1536": (576, 1536),
    "lm_head 49152x576": (49152, 576),
}
COLD_BYTES = 256 * 2**20  # copies of each packed weight: at least this much, past any cache


def _kernels(name: str, w: torch.Tensor):
    gated = name.startswith("gate_up")
    if gated:
        q = int8_gemm.pack_weight(w, gated=True)
        fp = gemm.pack_gated_weight(w)
        if fp is None:  # oneDNN (no AVX-512): the linear, then the SiLU gate
            return gemm.pack_weight(w), q, _onednn_silu_and_mul, int8_gemm.int8_silu_and_mul
        return fp, q, gemm.packed_silu_and_mul, int8_gemm.int8_silu_and_mul
    fp, q = gemm.pack_weight(w), int8_gemm.pack_weight(w)
    return fp, q, gemm.packed_linear, int8_gemm.int8_linear


def _onednn_silu_and_mul(x: torch.Tensor, w: gemm.PackedWeight) -> torch.Tensor:
    return kernels.silu_and_mul(gemm.packed_linear(x, w))


def _best_ms(fn, inputs, weights, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for w in weights:
            fn(inputs, w)
        best = min(best, (time.perf_counter() - start) / len(weights))
    return best * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not gemm.packing_available() or not int8_gemm.kernel_available():
        raise SystemExit("needs packed float32 weights and the int8 C kernel (VNNI or AVX2)")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, weights cold, "
        f"float32 {gemm.linear_backend()}, int8 {int8_gemm.simd()}"
    )
    print("| shape | rows | float32 ms | int8 ms | int8 speed-up | float32 GB/s | int8 GB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for name, (n, k) in SHAPES.items():
        fp_w, q_w = [], []  # as many int8 copies as float32 ones hold bytes: both equally cold
        for i in range(max(1, COLD_BYTES // (n * k))):
            fp, q, fp_fn, q_fn = _kernels(name, torch.randn(n, k, generator=g) / k**0.5)
            q_w.append(q)
            if i < max(1, COLD_BYTES // (n * k * 4)):
                fp_w.append(fp)
        for rows in args.rows:
            x = torch.randn(rows, k, generator=g)
            fp_ms = _best_ms(fp_fn, x, fp_w, args.repeats)
            q_ms = _best_ms(q_fn, x, q_w, args.repeats)
            fp_gbs, q_gbs = n * k * 4 / fp_ms / 1e6, n * k / q_ms / 1e6
            print(f"| {name} | {rows} | {fp_ms:.3f} | {q_ms:.3f} | {fp_ms / q_ms:.2f}x | "
                  f"{fp_gbs:.1f} | {q_gbs:.1f} |")  # fmt: skip
        del fp_w, q_w


if __name__ == "__main__":
    main()
