"""Beam search, structured outputs and logit controls at TP=2 (`mp`, gloo on CPU) give what
TP=1 gives: forks and copy-on-write block copies reach every rank, and the driver-side
sampler masks are unaffected by where the model runs."""

from __future__ import annotations

import contextlib
import json

import jsonschema
import pytest

from leaflm.engine import LLM, BeamSearchParams, SamplingParams, StructuredOutputsParams
from leaflm.engine.executor.mp import WorkerPool
from leaflm.engine.testing import random_token_prompts

SCHEMA = {
    "type": "object",
    "properties": {
        "k": {"enum": ["a", "b"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 50},
    },
    "required": ["k", "n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module", autouse=True)
def worker_pool():
    with WorkerPool(2) as pool:
        yield pool


@contextlib.contextmanager
def engine(model_dir, **kwargs):
    llm = LLM(str(model_dir), block_size=4, kv_cache_memory="4MiB", **kwargs)
    try:
        yield llm
    finally:
        llm.shutdown()


def run(llm, prompts):
    beams = llm.beam_search(prompts, BeamSearchParams(3, 6, ignore_eos=True))
    params = [
        SamplingParams(
            temperature=1.0,
            seed=k,
            max_tokens=40,
            structured_outputs=StructuredOutputsParams(json=SCHEMA),
        )
        for k in range(len(prompts))
    ] + [SamplingParams(temperature=0.0, max_tokens=6, logit_bias={57: 8.0}, bad_words=["the"])]
    outs = llm.generate([*prompts, prompts[0]], params, use_tqdm=False)  # fmt: skip
    stats = llm.llm_engine.stats()
    assert stats.num_blocks_free == stats.num_blocks_total
    return [[s.tokens for s in b.sequences] for b in beams], [o.outputs[0].text for o in outs]


def test_tp2_matches_tp1(tiny_models):
    model_dir = tiny_models("llama")
    prompts = random_token_prompts(3, vocab=380, lo=5, hi=20, seed=2)
    with engine(model_dir) as llm:
        beams1, texts1 = run(llm, prompts)
    with engine(model_dir, tensor_parallel_size=2, distributed_executor_backend="mp") as llm:
        assert llm.llm_engine.runner is None
        beams2, texts2 = run(llm, prompts)
    assert beams2 == beams1
    assert texts2 == texts1
    for text in texts1[:-1]:
        jsonschema.validate(json.loads(text), SCHEMA)
