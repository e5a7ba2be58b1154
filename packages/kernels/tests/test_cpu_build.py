"""Building the C kernels: cached per source/flags/compiler/CPU, and failures explain themselves."""

from __future__ import annotations

import pytest

from leaflm.kernels.cpu import build


def test_a_missing_compiler_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not usable"):
        build._build("/nonexistent/cc")


def test_a_broken_compiler_reports_its_command(tmp_path, monkeypatch):
    fake = tmp_path / "cc"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = --version ]; then echo fake 1.0; exit 0; fi\necho boom >&2; exit 1\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="boom"):
        build._build(str(fake))
    assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-built left behind


def test_the_sources_build_wherever_a_compiler_works(tmp_path, monkeypatch):
    """A compile error in leaflm's own C must fail here: elsewhere it reads as a skip or a
    silent fall back to the PyTorch reference (a typo in gemm.c once showed only as 71
    skipped GEMM tests and a 50x slower int8 engine)."""
    cc = build.shutil.which("cc") or build.shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path))
    assert build._build(cc).is_file()


def test_builds_are_cached_by_content(tmp_path, monkeypatch):
    if build.library() is None:
        pytest.skip(f"no working C compiler here: {build.unavailable_reason()}")
    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path))
    cc = build.shutil.which("cc") or build.shutil.which("gcc")
    first = build._build(cc)
    mtime = first.stat().st_mtime_ns
    assert build._build(cc) == first and first.stat().st_mtime_ns == mtime


def test_a_compiler_wrapper_gets_its_own_build(tmp_path, monkeypatch):
    """Same --version output, different flags (how the AVX2 path is built on AVX-512 hosts)."""
    if build.library() is None:
        pytest.skip(f"no working C compiler here: {build.unavailable_reason()}")
    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "SOURCES", ("rescore.c",))  # a small build is enough
    cc = build.shutil.which("cc") or build.shutil.which("gcc")
    wrapper = tmp_path / "cc-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {cc} "$@"\n')
    wrapper.chmod(0o755)
    assert build._build(str(wrapper)) != build._build(cc)
