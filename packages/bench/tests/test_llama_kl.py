"""llama.cpp's own KL of the shipped Q4_1 file against its F32 copy (`leaflm bench kl`).

The live test runs both `llama-perplexity` passes for real on the eval text's first 300
tokens (two 128-token chunks) and needs the peer built (`nox -s bench-peers`); it skips,
saying so, when it is not. The parser test reads output captured from a real run; the
build tests check, on a fake cache, that a binary added later is built alone and that a
build with other flags or for another CPU is redone; one compiles with the build's own flags
to show they leave ggml's crashing AMX path out.
"""

from __future__ import annotations

import math
import platform
import shutil
import struct
import subprocess
from pathlib import Path

import psutil
import pytest

from leaflm.bench.peers import llama_cpp, llama_kl

DATA = Path(__file__).parent / "data"


def _llama_kl_ready() -> bool:
    try:
        return llama_cpp.is_built() and llama_cpp.f32_gguf_path().is_file()
    except ValueError:  # the default model's package is missing
        return False


needs_perplexity = pytest.mark.skipif(
    not _llama_kl_ready(),
    reason="llama.cpp not built with today's flags for this CPU: run `nox -s bench-peers`",
)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_a_captured_kl_run_is_read():
    result = llama_kl.parse_kl_output((DATA / "llama_perplexity_kld.txt").read_text())
    assert (result.chunks, result.ctx) == (6, 512)
    assert result.positions == 6 * 255
    assert 0 <= result.mean_kl <= result.max_kl
    assert result.mean_kl_err >= 0
    assert 0.0 <= result.top1_agreement <= 1.0
    assert result.candidate_ppl > 1 and result.reference_ppl > 1


def test_output_without_the_kl_statistics_is_a_clear_error():
    text = (DATA / "llama_perplexity_kld.txt").read_text()
    cut = text[: text.index("====== KL divergence statistics")]
    with pytest.raises(ValueError, match="mean KLD"):
        llama_kl.parse_kl_output(cut)


def test_base_file_tokens_are_read_in_chunks(tmp_path):
    base = tmp_path / "base.kld"
    ids = list(range(12))
    base.write_bytes(b"_logits_" + struct.pack("<Iii", 4, 100, 3) + struct.pack("<12i", *ids))
    assert llama_kl.read_base_tokens(base) == (4, [ids[0:4], ids[4:8], ids[8:12]])
    base.write_bytes(b"_logits_" + struct.pack("<Iii", 4, 100, 3) + struct.pack("<8i", *ids[:8]))
    with pytest.raises(ValueError, match="truncated"):
        llama_kl.read_base_tokens(base)
    base.write_bytes(b"not a kld file")
    with pytest.raises(ValueError, match="not a llama-perplexity"):
        llama_kl.read_base_tokens(base)


@needs_perplexity
@pytest.mark.timeout(900)
def test_llama_cpp_q4_1_against_its_f32_on_a_slice_of_the_eval_text(tmp_path):
    from transformers import AutoTokenizer

    from leaflm.bench.model_dir import resolve_model_dir

    before = _children()
    text_file = tmp_path / "slice.txt"
    text_file.write_text(llama_kl.text_slice(300), encoding="utf-8")
    result, base = llama_kl.run_llama_kl(text_file, tmp_path, ctx=128, threads=2, timeout=600)
    assert _children() <= before  # both llama-perplexity runs are gone
    assert (result.chunks, result.ctx) == (2, 128)
    assert result.positions == 2 * 63
    assert math.isfinite(result.mean_kl) and result.mean_kl >= 0
    assert math.isfinite(result.max_kl) and result.max_kl >= result.mean_kl
    assert 0.0 <= result.top1_agreement <= 1.0
    assert math.isfinite(result.candidate_ppl) and math.isfinite(result.reference_ppl)
    # The base file holds llama.cpp's tokens of the slice: leaflm's tokenizer agrees, so
    # leaflm's figures on these chunks are on the same text.
    ctx, chunks = llama_kl.read_base_tokens(base)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(None))
    ids = tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"]
    assert not llama_kl.add_bos(llama_cpp.target_gguf("llama-cpp-q4"))
    assert (ctx, [t for c in chunks for t in c]) == (128, ids[: 2 * 128])
    logged = (tmp_path / "perplexity-q4_1-kl.log").read_text()
    assert llama_kl.parse_kl_output(logged) == result  # the run's log is kept beside it


def test_kl_subcommand_is_registered():
    import argparse

    from leaflm.bench.cli import add_bench_command

    parser = argparse.ArgumentParser()
    add_bench_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "kl", "--ctx", "256", "--max-tokens", "600", "--no-leaflm"])
    assert (args.ctx, args.max_tokens, args.no_leaflm, args.threads) == (256, 600, True, 2)


def _fake_build(root: Path, names, flags, cpu: str | None = None) -> None:
    """A cache directory as an earlier build left it: `names` in bin/ and its record."""
    import json

    bin_dir = root / "bench-peers" / f"llama-cpp-{llama_cpp.VERSION}" / "bin"
    bin_dir.mkdir(parents=True)
    for name in names:
        (bin_dir / name).write_text(f"old {name}")
    record = {
        "llama_cpp_python": llama_cpp.VERSION,
        "cmake_flags": list(flags),
        "cpu": cpu or llama_cpp.cpu_key(),
    }
    (bin_dir.parent / "build.json").write_text(json.dumps(record))


def test_an_earlier_build_gets_only_the_missing_binary_beside_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path / "cache"))
    old = [b for b in llama_cpp.BINARIES if b != "llama-perplexity"]
    _fake_build(tmp_path / "cache", old, llama_cpp.cmake_flags())
    assert llama_cpp.build_targets() == ["llama-perplexity"]
    assert not llama_cpp.is_built()
    built = tmp_path / "build-bin"
    built.mkdir()
    (built / "llama-perplexity").write_text("new")
    llama_cpp.install_binaries(built, ["llama-perplexity"])
    assert llama_cpp.is_built() and llama_cpp.build_targets() == []
    assert (llama_cpp.home() / "bin" / "llama-server").read_text() == "old llama-server"
    assert not [p for p in (llama_cpp.home() / "bin").iterdir() if p.name.startswith(".")]


def test_a_build_with_other_flags_is_rebuilt_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path / "cache"))
    _fake_build(tmp_path / "cache", llama_cpp.BINARIES, ["-DGGML_NATIVE=OFF"])
    assert llama_cpp.build_targets() == list(llama_cpp.BINARIES)


def test_a_build_for_another_cpu_is_rebuilt_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path / "cache"))
    _fake_build(tmp_path / "cache", llama_cpp.BINARIES, llama_cpp.cmake_flags(), cpu="0" * 16)
    assert not llama_cpp.is_built()
    assert llama_cpp.build_targets() == list(llama_cpp.BINARIES)


def _gcc_macros(flags: str) -> str:
    cmd = ["gcc", *flags.split(), "-dM", "-E", "-"]
    return subprocess.run(cmd, input="", capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(
    platform.machine() != "x86_64" or shutil.which("gcc") is None, reason="needs gcc on x86_64"
)
def test_native_x86_flags_leave_amx_out():
    """ggml compiles its AMX path where __AMX_INT8__ is defined; the build's flags undefine it."""
    (cflags,) = [
        f.split("=", 1)[1] for f in llama_cpp.cmake_flags() if f.startswith("-DCMAKE_C_FLAGS=")
    ]
    cpu_flags = Path("/proc/cpuinfo").read_text().split()
    if "amx_int8" in cpu_flags:  # what the flags are there to undo
        assert "__AMX_INT8__" in _gcc_macros("-march=native")
    built_with = _gcc_macros(f"{cflags} -march=native")  # CMAKE_C_FLAGS come before ggml's own
    assert "__AMX" not in built_with
    assert ("__AVX2__" in built_with) == ("avx2" in cpu_flags)  # the rest stays native
