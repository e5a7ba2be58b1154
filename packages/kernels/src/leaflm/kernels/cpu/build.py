"""Compile the C kernels once per machine and load them with ctypes.

The sources are plain C with OpenMP: no PyTorch headers, so a build takes about a second with
the system C compiler. They are built for the host CPU (``-march=native``); the cache key holds
the source, the flags, the compiler (its path and version: a wrapper that adds flags, such as
``-mno-avx512f``, reports its compiler's version) and the CPU's model and flags, so a home
directory shared by different machines never loads a library built for another CPU. The
library links the OpenMP runtime PyTorch has already loaded (same soname), so the kernels
share its threads.

Anything that goes wrong (no compiler, a failed build) leaves the kernels unavailable, with
the reason in :func:`unavailable_reason`; callers then use the PyTorch reference.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

DISABLE_VAR = "LEAFLM_CPU_KERNELS"  # "0" turns the C kernels off
SOURCES = (
    "paged_attention.c", "layers.c", "sampling.c", "gemm.c", "int8_gemm.c", "gguf_gemm.c",
    "rescore.c",
)  # fmt: skip
HEADERS = (
    "vec_math.h", "attention_vec.h", "gguf_gemm_avx2.h", "int8_gemm_avx2.h", "panel_items.h",
)  # fmt: skip
FLAGS = (
    "-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-fno-math-errno", "-std=c11",
    "-shared", "-fPIC",
)  # fmt: skip

_failure: str | None = None


def disabled() -> bool:
    """``LEAFLM_CPU_KERNELS=0``: no C kernels and no weight packing, the plain PyTorch path."""
    return os.environ.get(DISABLE_VAR, "1").strip() == "0"


def cache_dir() -> Path:
    root = os.environ.get("LEAFLM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "leaflm"
    )
    return Path(root) / "cpu-kernels"


def cpu_identity() -> str:
    """The CPU's model name and feature flags (what -march=native compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise RuntimeError(f"C compiler {cc!r} is not usable: {e}") from e


def _build(cc: str) -> Path:
    src_dir = Path(__file__).parent
    sources = [src_dir / name for name in SOURCES]
    key = hashlib.sha256()
    headers = [src_dir / name for name in HEADERS]
    for part in (*[f.read_bytes() for f in sources + headers], " ".join(FLAGS).encode()):
        key.update(part)
    key.update(cc.encode() + b"\0" + _compiler_version(cc).encode())
    key.update(cpu_identity().encode())
    target = cache_dir() / f"leaflm_cpu_kernels-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        cmd = [cc, *FLAGS, *map(str, sources), "-o", str(built), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the CPU kernels failed: {' '.join(cmd)}\n{proc.stderr}")
        os.replace(built, target)  # atomic: concurrent builders all end with one whole file
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (see :func:`unavailable_reason`)."""
    global _failure
    if disabled():
        _failure = f"{DISABLE_VAR}=0"
        return None
    import torch  # noqa: F401  (loads the OpenMP runtime the library must share)

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        _failure = "no C compiler found (set CC)"
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, RuntimeError) as e:
        _failure = str(e)
        return None
    _declare(lib)
    from leaflm.kernels.cpu import graph  # after torch: its dispatch mode imports torch

    graph.make_recordable(lib, [n for n in vars(lib) if n.startswith("leaflm_")])
    return lib


def require_library() -> ctypes.CDLL:
    """The loaded kernel library; raises RuntimeError with the reason when there is none."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the CPU kernels are not available: {_failure}")
    return lib


def unavailable_reason() -> str | None:
    """Why :func:`library` returned None, after it has been called."""
    return _failure


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    fn = lib.leaflm_paged_attention
    fn.restype = None
    fn.argtypes = [
        p, i64, p, p, ctypes.c_int,  # q, q_stride, caches, cache_half
        p, i64, p, p, p,  # block_tables, table_stride, row_table, row_ctx, out
        i64, i64, i64, i64, i64,  # rows, num_heads, num_kv, head_dim, block_size
        f32, p, i64, f32, ctypes.c_int,  # scale, alibi, window, softcap, num_threads
    ]  # fmt: skip
    lib.leaflm_write_kv.restype = None
    lib.leaflm_write_kv.argtypes = [p, i64, p, i64, p, p, ctypes.c_int, p, i64, i64]
    lib.leaflm_rms_norm.restype = None
    lib.leaflm_rms_norm.argtypes = [p, i64, p, i64, p, p, p, i64, i64, f32, ctypes.c_int]
    lib.leaflm_rotary.restype = None
    lib.leaflm_rotary.argtypes = [p, p, i64, i64, i64, i64, p, i64, ctypes.c_int, ctypes.c_int]
    lib.leaflm_gather_rows.restype = i64
    lib.leaflm_gather_rows.argtypes = [p, i64, i64, i64, p, i64, i64, p]
    lib.leaflm_silu_and_mul.restype = None
    lib.leaflm_silu_and_mul.argtypes = [p, i64, p, i64, i64, ctypes.c_int]
    lib.leaflm_argmax_rows.restype = None
    lib.leaflm_argmax_rows.argtypes = [p, i64, i64, i64, p, ctypes.c_int]
    lib.leaflm_apply_token_bitmask.restype = None
    lib.leaflm_apply_token_bitmask.argtypes = [p, i64, p, i64, p, i64, i64, ctypes.c_int]
    lib.leaflm_gemm_panel_width.restype = ctypes.c_int
    lib.leaflm_gemm_panel_width.argtypes = []
    lib.leaflm_gemm.restype = None
    lib.leaflm_gemm.argtypes = [p, i64, p, p, p, i64, i64, i64, i64, ctypes.c_int]
    lib.leaflm_gemm_silu_mul.restype = None
    lib.leaflm_gemm_silu_mul.argtypes = [p, i64, p, p, i64, i64, i64, i64, ctypes.c_int]
    lib.leaflm_int8_gemm_panel_width.restype = ctypes.c_int
    lib.leaflm_int8_gemm_panel_width.argtypes = []
    lib.leaflm_int8_gemm_simd.restype = ctypes.c_char_p
    lib.leaflm_int8_gemm_simd.argtypes = []
    lib.leaflm_int8_gemm.restype = None
    lib.leaflm_int8_gemm.argtypes = [
        p, i64, p, p, p, p, p, p, p, i64,  # x, ldx, xq, xs, xn, packed, scales, bias, out, ldo
        i64, i64, i64, i64, ctypes.c_int, ctypes.c_int,  # M, N, K, block, gated, num_threads
    ]  # fmt: skip
    lib.leaflm_rescore_near_max.restype = None
    lib.leaflm_rescore_near_max.argtypes = [
        p, i64, p, p, p, i64,  # x, x_stride, weight, bias, logits, ld
        i64, i64, i64, f32, ctypes.c_int,  # rows, vocab, dim, margin, num_threads
    ]  # fmt: skip
    lib.leaflm_gguf_vnni.restype = ctypes.c_int
    lib.leaflm_gguf_vnni.argtypes = []
    lib.leaflm_gguf_simd.restype = ctypes.c_char_p
    lib.leaflm_gguf_simd.argtypes = []
    lib.leaflm_gguf_block_stride.restype = i64
    lib.leaflm_gguf_block_stride.argtypes = [ctypes.c_int]
    lib.leaflm_gguf_unit_bytes.restype = i64
    lib.leaflm_gguf_unit_bytes.argtypes = [ctypes.c_int]
    lib.leaflm_gguf_gemm.restype = ctypes.c_int
    lib.leaflm_gguf_gemm.argtypes = [ctypes.c_int, p, i64, p, p, i64, i64, i64, i64, ctypes.c_int]
    lib.leaflm_gguf_rows.restype = ctypes.c_int
    lib.leaflm_gguf_rows.argtypes = [ctypes.c_int, p, i64, i64, p, i64, p]
    lib.leaflm_gguf_quantize_rows.restype = None
    lib.leaflm_gguf_quantize_rows.argtypes = [p, i64, i64, i64, p, p, p]
