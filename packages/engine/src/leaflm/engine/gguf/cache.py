"""Where converted GGUF models live, and how a conversion is published without half states.

The cache key covers the file's resolved path, size and mtime plus the converter's format
version, so an edited or replaced file (or a fixed converter) converts again. A conversion is
written into a sibling temp dir and renamed into place: a crash leaves at most a stale temp dir,
never a directory that looks complete but is not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

# Bump when the converted layout changes, so old cache entries are not reused.
FORMAT_VERSION = 1


def cache_root() -> Path:
    """`$LEAFLM_CACHE_DIR`, else the platform's user cache dir for leaflm."""
    env = os.environ.get("LEAFLM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("leaflm"))


def gguf_cache_dir(gguf_path: str | Path) -> Path:
    """The directory a conversion of `gguf_path` is (or will be) cached in."""
    path = Path(gguf_path).resolve()
    st = path.stat()
    ident = f"{FORMAT_VERSION}\0{path}\0{st.st_size}\0{st.st_mtime_ns}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def staging_dir(target: Path) -> Path:
    """A fresh temp dir next to `target` (same filesystem, so the final rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if not _alive(stale.name.rsplit("-", 1)[-1]):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def publish(staging: Path, target: Path) -> Path:
    """Rename `staging` to `target`; if another process won the race, keep its copy."""
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return target
