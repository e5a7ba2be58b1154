"""llama.cpp as a peer: built once from the source vendored in the `llama-cpp-python` sdist.

The sdist is the one source of llama.cpp a package registry carries. Its vendored tree is
configured with `-DGGML_NATIVE=ON` (the build machine's own instruction set, as a user
building it would) and with every option that downloads something at build time turned off
(the web UI, curl, OpenSSL), and on x86 with AMX left out (see `NO_AMX`). Only the binaries the bench runs are built (llama.cpp's tools
are on by default; its examples and tests stay off), statically linked, into
`peers_root()/llama-cpp-<version>/bin`; the build directory is thrown away after. A binary
added to `BINARIES` later is built alone and put beside the ones already there. Targets:
`llama-cpp` serves an F32 GGUF made from the default model's Q4_1 file (the same weights
leaflm runs in float32), `llama-cpp-q4` serves the file as shipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leaflm.bench.peers import not_installed, peers_root
from leaflm.kernels.cpu.build import cpu_identity

VERSION = "0.3.36"  # llama-cpp-python, whose sdist vendors llama.cpp
BINARIES = (
    "llama-server",
    "llama-batched-bench",
    "llama-bench",
    "llama-quantize",
    "llama-perplexity",  # its --kl-divergence: llama.cpp's own Q4_1-vs-F32 accuracy
)
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_LLGUIDANCE=OFF",
)
# -march=native turns on ggml's AMX path on Sapphire Rapids and later, and that path crashes
# there in ggml_backend_amx_mul_mat on the default model's Q4_1 weights (SIGSEGV at the first
# graph compute; llama.cpp #20824 reports the same crash). Leaving AMX out keeps every other
# native instruction (AVX-512, VNNI) and is a no-op on CPUs without AMX.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def cmake_flags() -> list[str]:
    """CMAKE_FLAGS, plus NO_AMX for the C and C++ compilers on x86 (other compilers lack it)."""
    flags = list(CMAKE_FLAGS)
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    return flags


def cpu_key() -> str:
    """Which CPU a native build is for: its binaries may not run on another one."""
    return hashlib.sha256(cpu_identity().encode()).hexdigest()[:16]


def home() -> Path:
    return peers_root() / f"llama-cpp-{VERSION}"


def binary(name: str) -> Path:
    """The path of a built binary; PeerNotInstalledError if the build is missing."""
    path = home() / "bin" / name
    if not path.is_file():
        raise not_installed(f"llama.cpp ({name})")
    return path


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not (home() / "bin" / b).is_file()]


def is_built() -> bool:
    """Every binary is there, built with today's version and flags for this CPU."""
    return _previous_build() is not None and not missing_binaries()


def _previous_build() -> dict[str, Any] | None:
    """The build record, if its binaries were built with today's version and flags on this CPU."""
    info_path = home() / "build.json"
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    same = (
        info.get("llama_cpp_python") == VERSION
        and info.get("cmake_flags") == cmake_flags()
        and info.get("cpu") == cpu_key()
    )
    return info if same else None


def build_targets() -> list[str]:
    """The binaries a build must make: the missing ones, or all after a version, flag or CPU change."""
    return missing_binaries() if _previous_build() is not None else list(BINARIES)


def build(jobs: int = 2, niceness: int = 10, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Download the sdist, build the missing binaries, publish them; a no-op once built.

    Binaries already built with the same version and flags stay (a new one is built alone);
    otherwise all are rebuilt. Each lands in `bin/` by an atomic rename, the build record
    (`build.json`: version, flags, binaries, seconds the last build took) last.
    """
    previous = _previous_build()
    targets = build_targets()
    if not targets and previous is not None:
        log(f"[llama.cpp] already built in {home()}")
        return previous
    peers_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=peers_root(), prefix=".llama-build-") as tmp:
        work = Path(tmp)
        log(f"[llama.cpp] downloading the llama-cpp-python=={VERSION} sdist")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={VERSION}", "-d", str(work)],
            check=True,
        )  # fmt: skip
        (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        source = work / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
        build_dir = work / "build"
        nice = ["nice", "-n", str(niceness)] if niceness else []
        start = time.monotonic()
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        configure = ["cmake", "-S", str(source), "-B", str(build_dir), *generator, *cmake_flags()]
        log(f"[llama.cpp] {' '.join(configure)}")
        subprocess.run(configure, check=True)
        compile_cmd = ["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *targets]
        log(f"[llama.cpp] {' '.join(compile_cmd)} (this takes a while)")
        subprocess.run([*nice, *compile_cmd], check=True)
        seconds = time.monotonic() - start
        install_binaries(build_dir / "bin", targets)
    info = {
        "llama_cpp_python": VERSION,
        "cmake_flags": cmake_flags(),
        "cpu": cpu_key(),
        "binaries": sorted(set(BINARIES) - set(missing_binaries())),
        "last_built": targets,
        "jobs": jobs,
        "nice": niceness,
        "build_seconds": round(seconds, 1),
    }
    write_build_record(info)
    log(f"[llama.cpp] built {', '.join(targets)} in {seconds:.0f} s into {home()}")
    return info


def install_binaries(source_dir: Path, names: list[str]) -> None:
    """Copy built binaries into `bin/`, each by an atomic rename (the others stay)."""
    bin_dir = home() / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        partial = bin_dir / f".{name}.tmp-{os.getpid()}"
        shutil.copy2(source_dir / name, partial)
        os.replace(partial, bin_dir / name)


def write_build_record(info: dict[str, Any]) -> None:
    partial = home() / f".build.json.tmp-{os.getpid()}"
    partial.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(partial, home() / "build.json")


def default_q4_gguf() -> Path:
    from leaflm.engine.default_model import known_model_gguf

    return known_model_gguf()


def f32_gguf_path(source: Path | None = None) -> Path:
    source = source or default_q4_gguf()
    return home() / "models" / (source.name.replace(".Q4_1.gguf", "") + ".F32.gguf")


def make_f32_gguf(source: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """An F32 GGUF of `source` (default: the embedded Q4_1 model): the weights leaflm runs."""
    source = source or default_q4_gguf()
    target = f32_gguf_path(source)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    cmd = [str(binary("llama-quantize")), "--allow-requantize", str(source), str(partial), "F32"]
    log(f"[llama.cpp] {' '.join(cmd)}")
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    return target


def target_gguf(target: str) -> Path:
    """The model file a target serves: `llama-cpp` the F32 file, `llama-cpp-q4` as shipped."""
    if target == "llama-cpp-q4":
        return default_q4_gguf()
    if target == "llama-cpp":
        path = f32_gguf_path()
        if not path.is_file():
            raise not_installed(f"the F32 GGUF for llama.cpp ({path})")
        return path
    raise ValueError(f"unknown llama.cpp target {target!r}")


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def server_command(
    target: str, port: int, parallel: int = 16, ctx_per_slot: int = 512, alias: str = ""
) -> list[str]:
    """`llama-server` on 127.0.0.1:`port` with `parallel` slots of `ctx_per_slot` tokens."""
    cmd = [
        str(binary("llama-server")),
        "-m", str(target_gguf(target)),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--parallel", str(parallel),
        "-c", str(parallel * ctx_per_slot),
        "--threads", str(threads()),
        "--no-webui",
    ]  # fmt: skip
    return cmd + (["--alias", alias] if alias else [])


def batched_bench_command(
    target: str, prompt_len: int = 128, output_len: int = 128, sequences: int = 64
) -> list[str]:
    """`llama-batched-bench`: `sequences` parallel sequences of `prompt_len` in / `output_len` out."""
    ctx = sequences * (prompt_len + output_len)
    return [
        str(binary("llama-batched-bench")),
        "-m", str(target_gguf(target)),
        "-c", str(ctx),
        "-b", "2048",
        "-ub", "512",
        "-npp", str(prompt_len),
        "-ntg", str(output_len),
        "-npl", str(sequences),
        "--threads", str(threads()),
        "--output-format", "jsonl",
    ]  # fmt: skip


_TABLE_ROW = re.compile(r"^\|\s*\d+\s*\|")
_COLUMNS = ("pp", "tg", "pl", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "t", "speed")


def parse_batched_bench(text: str) -> list[dict[str, float]]:
    """The result rows of `llama-batched-bench` output, JSONL or its markdown table.

    Each row has pp, tg, pl (sequences), n_kv, t_pp/t_tg/t (seconds) and the matching
    speeds (tokens/s). ValueError if the output holds no result row.
    """
    rows: list[dict[str, float]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            data = json.loads(line)
            rows.append({k: float(data[k]) for k in _COLUMNS})
        elif _TABLE_ROW.match(line):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append({k: float(v) for k, v in zip(_COLUMNS, cells, strict=True)})
    if not rows:
        raise ValueError(f"no result rows in llama-batched-bench output:\n{text[-1500:]}")
    return rows


_GENERATED = re.compile(r"\|\s+eval time =\s+[\d.]+ ms /\s+(\d+) tokens")


def generated_per_request(server_log: str) -> list[int]:
    """Tokens llama-server generated for each finished request, from its log's timing lines.

    The server's own count: vLLM's client cannot read llama-server's `usage` (it comes in the
    last chunk that also holds `choices`) and re-tokenizes the text, which can differ by a
    token, so whether ignore_eos was honoured is checked here.
    """
    return [int(m.group(1)) for m in _GENERATED.finditer(server_log)]
