"""GPU microbenchmark of the Triton kernels against the device's own limits.

Measures, on one CUDA device: device-to-device copy bandwidth (read + write bytes); paged decode
attention's achieved GB/s (KV read + q + out) and its share of that copy bandwidth (target >= 70%);
prefill attention TFLOP/s (causal FLOPs); the fused sampler against a sort-based PyTorch top-p
(target >= 3x). Writes ``DIR/kernels.md`` and ``DIR/kernels.json``.

``--dry-run`` (implied without CUDA) runs tiny sizes on CPU under ``TRITON_INTERPRET=1`` so the
code path can be exercised anywhere; its numbers mean nothing.

    python -m leaflm.kernels.benchmarks.gpu_microbench --out benchmarks/gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

Bench = Callable[[Callable[[], object]], float]


@dataclass
class Sizes:
    """Problem sizes; ``full()`` is what the issue asks for, ``tiny()`` is for dry runs."""

    copy_bytes: int
    batch: int
    context: int
    q_heads: int
    kv_heads: int
    head_dim: int
    page: int
    prefill_seqs: int
    prefill_len: int
    vocab: int
    sample_rows: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(1 << 30, 64, 2048, 32, 8, 128, 16, 8, 2048, 128 * 1024, 256)

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(1 << 20, 2, 40, 4, 2, 32, 16, 2, 24, 512, 4)


@dataclass
class Row:
    metric: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Report:
    device: str
    torch: str
    triton: str
    python: str
    command: str
    dry_run: bool
    rows: list[Row] = field(default_factory=list)


def decode_bytes(
    batch: int, context: int, q_heads: int, kv_heads: int, head_dim: int, elt: int
) -> int:
    """HBM bytes a decode step must move: all K and V of the context, plus q in and out."""
    kv = 2 * batch * context * kv_heads * head_dim * elt
    return kv + 2 * batch * q_heads * head_dim * elt


def causal_attention_flops(seq_lens: list[int], heads: int, head_dim: int) -> int:
    """FLOPs of causal attention (QK^T and PV, 2 per multiply-add) over visible pairs only."""
    pairs = sum(n * (n + 1) // 2 for n in seq_lens)
    return 4 * pairs * heads * head_dim


def render_markdown(rep: Report) -> str:
    """The report as a markdown table with its provenance."""
    lines = [
        "# leaflm kernels microbenchmark",
        "",
        f"- device: {rep.device}",
        f"- torch {rep.torch}, triton {rep.triton}, python {rep.python}",
        f"- command: `{rep.command}`",
    ]
    if rep.dry_run:
        lines.append("- DRY RUN: tiny sizes under the Triton interpreter; numbers are meaningless")
    lines += ["", "| metric | value | unit | target | met | note |", "|---|---:|---|---|---|---|"]
    for r in rep.rows:
        met = "" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(f"| {r.metric} | {r.value:.4g} | {r.unit} | {r.target} | {met} | {r.note} |")
    return "\n".join(lines) + "\n"


def _timer(cuda: bool) -> Bench:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` on CUDA, wall clock otherwise."""
    if cuda:
        from triton.testing import do_bench

        return lambda fn: float(do_bench(fn, warmup=25, rep=100, return_mode="median"))

    def wall(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[1]

    return wall


def torch_top_p_sample(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """The sort-based baseline (as HF/vLLM's PyTorch path): softmax, full sort, cumsum, mask."""
    probs = torch.softmax(logits / temperature.unsqueeze(1), dim=-1)
    sorted_p, idx = torch.sort(probs, dim=-1, descending=True)
    cum = sorted_p.cumsum(-1)
    sorted_p = sorted_p.masked_fill(cum - sorted_p > top_p.unsqueeze(1), 0.0)
    choice = torch.multinomial(sorted_p, 1)
    return idx.gather(1, choice).squeeze(1)


def _copy_bandwidth(s: Sizes, device: str, bench: Bench) -> float:
    src = torch.empty(s.copy_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    return 2 * s.copy_bytes / bench(lambda: dst.copy_(src)) / 1e6


def _decode(s: Sizes, device: str, bench: Bench, gen: torch.Generator) -> tuple[float, float]:
    from leaflm.kernels import triton as tri
    from leaflm.kernels.testing import make_paged_case

    dt = torch.bfloat16
    lens = [s.context] * s.batch
    case = make_paged_case(lens, s.kv_heads, s.head_dim, s.page, dt, device, gen, dense=False)
    q = torch.randn(s.batch, s.q_heads, s.head_dim, device=device).to(dt)
    out = torch.empty_like(q)
    args = (q, case.key_cache, case.value_cache, case.block_tables, case.seq_lens, s.head_dim**-0.5)
    ms = bench(lambda: tri.paged_attention_decode(*args, out=out))
    return ms, decode_bytes(s.batch, s.context, s.q_heads, s.kv_heads, s.head_dim, 2) / ms / 1e6


def _prefill(s: Sizes, device: str, bench: Bench, gen: torch.Generator) -> float:
    from leaflm.kernels import triton as tri
    from leaflm.kernels.testing import make_paged_case

    dt = torch.bfloat16
    lens = [s.prefill_len] * s.prefill_seqs
    case = make_paged_case(lens, s.kv_heads, s.head_dim, s.page, dt, device, gen, dense=False)
    qsl = torch.arange(0, s.prefill_seqs + 1, dtype=torch.int32, device=device) * s.prefill_len
    q = torch.randn(sum(lens), s.q_heads, s.head_dim, device=device).to(dt)
    out = torch.empty_like(q)
    args = (
        q,
        case.key_cache,
        case.value_cache,
        case.block_tables,
        qsl,
        case.seq_lens,
        s.head_dim**-0.5,
    )
    ms = bench(lambda: tri.paged_attention_prefill(*args, out=out, max_query_len=s.prefill_len))
    return causal_attention_flops(lens, s.q_heads, s.head_dim) / ms / 1e9


def _sampler(
    s: Sizes, device: str, bench: Bench, gen: torch.Generator
) -> tuple[float, float, float]:
    """(sort-based ms, fused top-p ms, fused top-k+top-p ms)."""
    from leaflm.kernels import triton as tri

    b, v = s.sample_rows, s.vocab
    logits = (torch.randn(b, v, generator=gen) * 3).to(device)
    temp = torch.ones(b, device=device)
    top_p = torch.full((b,), 0.9, device=device)
    top_k = torch.full((b,), -1, dtype=torch.int32, device=device)
    top_k50 = torch.full((b,), 50, dtype=torch.int32, device=device)
    min_p = torch.zeros(b, device=device)
    seeds = torch.arange(b, device=device)
    base = bench(lambda: torch_top_p_sample(logits, temp, top_p))
    fused = bench(lambda: tri.sample(logits, temp, top_k, top_p, min_p, seeds, seeds))
    combo = bench(lambda: tri.sample(logits, temp, top_k50, top_p, min_p, seeds, seeds))
    return base, fused, combo


def run(s: Sizes, device: str, bench: Bench) -> list[Row]:
    """Every measurement, as table rows."""
    gen = torch.Generator().manual_seed(0)
    copy_gbs = _copy_bandwidth(s, device, bench)
    ms, gbs = _decode(s, device, bench, gen)
    pct = 100 * gbs / copy_gbs
    shape = f"batch {s.batch}, ctx {s.context}, {s.q_heads}q/{s.kv_heads}kv heads, d{s.head_dim}, bf16, page {s.page}"
    tflops = _prefill(s, device, bench, gen)
    base, fused, combo = _sampler(s, device, bench, gen)
    speedup = base / fused
    return [
        Row("device copy bandwidth (read+write)", copy_gbs, "GB/s", note="torch copy_, bf16"),
        Row("paged decode attention", gbs, "GB/s", note=f"{ms * 1e3:.1f} us; {shape}"),
        Row("decode / copy bandwidth", pct, "%", ">= 70%", pct >= 70),
        Row("paged prefill attention", tflops, "TFLOP/s",
            note=f"{s.prefill_seqs} x {s.prefill_len} tokens, causal FLOPs, bf16"),
        Row("sort-based torch top-p sample", base, "ms", note=f"batch {s.sample_rows} x vocab {s.vocab}, fp32"),
        Row("fused sampler (top-p 0.9)", fused, "ms", note="threshold search, no sort"),
        Row("fused sampler speedup", speedup, "x", ">= 3x", speedup >= 3),
        Row("fused sampler (top-k 50 + top-p 0.9)", combo, "ms"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default="benchmarks/gpu", help="directory for kernels.md / kernels.json"
    )
    ap.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on CPU under TRITON_INTERPRET"
    )
    args = ap.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    if dry:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are first imported
    import triton

    device = "cpu" if dry else "cuda"
    name = "CPU (Triton interpreter)" if dry else torch.cuda.get_device_name(0)
    cmd = "python -m leaflm.kernels.benchmarks.gpu_microbench " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    rep = Report(
        name, torch.__version__, triton.__version__, platform.python_version(), cmd.strip(), dry
    )
    rep.rows = run(Sizes.tiny() if dry else Sizes.full(), device, _timer(not dry))
    text = render_markdown(rep)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.md").write_text(text)
    (out / "kernels.json").write_text(json.dumps(asdict(rep), indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
